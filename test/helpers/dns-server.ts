/**
 * A small real DNS server over UDP on 127.0.0.1, port 0, for discovery tests: it answers A, AAAA and
 * SRV queries from a record table the test changes at run time, NXDOMAIN for unknown names, and can
 * be told to stop answering (the client times out) or to answer SERVFAIL.
 *
 * Wire format (RFC 1035 §4, RFC 3596 for AAAA, RFC 2782 for SRV), written by hand so the resolver under
 * test (c-ares inside node:dns) parses real packets:
 *   header   id, flags (QR OPCODE AA TC RD | RA Z RCODE), qdcount, ancount, nscount, arcount: 6 × u16
 *   question name (labels, or a pointer 0b11 + 14-bit offset), qtype u16, qclass u16
 *   answer   name (a pointer to the question name at offset 12), type, class, ttl u32, rdlength, rdata
 *   SRV rdata = priority u16, weight u16, port u16, target name (uncompressed, as RFC 2782 asks)
 * Answers carry TTL 0 by default so the resolver's cache (c-ares keeps answers for their TTL) never
 * hides a change a test has just made.
 */
import { createSocket, type RemoteInfo } from "node:dgram";
import { isIPv4, isIPv6 } from "node:net";

export interface SrvRecordSpec {
  priority: number;
  weight: number;
  port: number;
  target: string;
}

export interface DnsRecords {
  a?: string[];
  aaaa?: string[];
  srv?: SrvRecordSpec[];
}

export type DnsServerMode = "answer" | "silent" | "servfail";

export interface DnsQueryLog {
  name: string;
  type: number;
}

export interface TestDnsServer {
  /** "127.0.0.1:PORT", the form Resolver.setServers() takes. */
  address: string;
  port: number;
  /** Every question received, in order, whatever the mode (lower-cased name, numeric qtype). */
  queries: DnsQueryLog[];
  /** Replaces every record of `name` (a name with no record of a type answers NODATA for it). */
  set(name: string, records: DnsRecords): void;
  /** Forgets `name`: NXDOMAIN from now on. */
  remove(name: string): void;
  mode(m: DnsServerMode): void;
  /** TTL written in answers, in seconds (0 by default). */
  ttl(seconds: number): void;
  close(): Promise<void>;
}

export const QTYPE = { A: 1, AAAA: 28, SRV: 33 } as const;
const CLASS_IN = 1;
const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4 } as const;
const HEADER_LEN = 12;

function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

class Malformed extends Error {}

/**
 * Reads a (possibly compressed) name at `offset`. Returns the dotted name and the offset just past it
 * in the original position (a pointer ends the name where it appears, not where it points).
 */
function readName(msg: Buffer, offset: number): { name: string; next: number } {
  const labels: string[] = [];
  let pos = offset;
  let next = -1;
  // Every pointer must go strictly backwards, so a malicious loop cannot spin forever.
  let limit = offset;
  for (;;) {
    if (pos >= msg.length) throw new Malformed("name runs past the packet");
    const len = msg[pos]!;
    if (len === 0) {
      if (next < 0) next = pos + 1;
      break;
    }
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (pos + 1 >= msg.length) throw new Malformed("truncated pointer");
      const target = ((len & 0x3f) << 8) | msg[pos + 1]!;
      if (target >= limit) throw new Malformed("forward or looping pointer");
      if (next < 0) next = pos + 2;
      limit = target;
      pos = target;
      continue;
    }
    if (kind !== 0) throw new Malformed("reserved label type");
    if (pos + 1 + len > msg.length) throw new Malformed("label runs past the packet");
    labels.push(msg.toString("latin1", pos + 1, pos + 1 + len));
    pos += 1 + len;
    if (labels.join(".").length > 253) throw new Malformed("name too long");
  }
  return { name: labels.join("."), next };
}

function encodeName(name: string): Buffer {
  const n = normalizeName(name);
  const parts: Buffer[] = [];
  for (const label of n === "" ? [] : n.split(".")) {
    const bytes = Buffer.from(label, "latin1");
    if (bytes.length === 0 || bytes.length > 63) throw new Error(`bad DNS label in ${JSON.stringify(name)}`);
    parts.push(Buffer.from([bytes.length]), bytes);
  }
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

function encodeIPv4(address: string): Buffer {
  return Buffer.from(address.split(".").map(Number));
}

function encodeIPv6(address: string): Buffer {
  let text = address;
  // An embedded dotted quad (::ffff:1.2.3.4) is the last two groups, written in hex like the rest.
  const lastColon = text.lastIndexOf(":");
  if (text.includes(".", lastColon)) {
    const v4 = encodeIPv4(text.slice(lastColon + 1));
    text = `${text.slice(0, lastColon + 1)}${v4.readUInt16BE(0).toString(16)}:${v4.readUInt16BE(2).toString(16)}`;
  }
  const groupsOf = (s: string): number[] => (s === "" ? [] : s.split(":").map((g) => Number.parseInt(g, 16)));
  const halves = text.split("::");
  const head = groupsOf(halves[0] ?? "");
  const tail = halves.length === 2 ? groupsOf(halves[1] ?? "") : [];
  const zeros = halves.length === 2 ? 8 - head.length - tail.length : 0;
  const groups = [...head, ...new Array<number>(Math.max(zeros, 0)).fill(0), ...tail];
  if (halves.length > 2 || groups.length !== 8) throw new Error(`cannot encode IPv6 address ${address}`);
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => {
    out.writeUInt16BE(g, i * 2);
  });
  return out;
}

function rr(type: number, ttl: number, rdata: Buffer): Buffer {
  const fixed = Buffer.alloc(12);
  fixed.writeUInt16BE(0xc000 | HEADER_LEN, 0); // the question's name, which always starts at offset 12
  fixed.writeUInt16BE(type, 2);
  fixed.writeUInt16BE(CLASS_IN, 4);
  fixed.writeUInt32BE(ttl, 6);
  fixed.writeUInt16BE(rdata.length, 10);
  return Buffer.concat([fixed, rdata]);
}

function srvRdata(r: SrvRecordSpec): Buffer {
  const fixed = Buffer.alloc(6);
  fixed.writeUInt16BE(r.priority, 0);
  fixed.writeUInt16BE(r.weight, 2);
  fixed.writeUInt16BE(r.port, 4);
  return Buffer.concat([fixed, encodeName(r.target)]);
}

export async function startDnsServer(): Promise<TestDnsServer> {
  const table = new Map<string, DnsRecords>();
  const queries: DnsQueryLog[] = [];
  let currentMode: DnsServerMode = "answer";
  let currentTtl = 0;
  const socket = createSocket("udp4");

  function respond(query: Buffer, rinfo: RemoteInfo): void {
    if (query.length < HEADER_LEN) return; // not even an id to answer to
    const flags = query.readUInt16BE(2);
    if (flags & 0x8000) return; // a response, not a query: never answer those
    const opcode = (flags >> 11) & 0x0f;
    const qdcount = query.readUInt16BE(4);

    let rcode: number = RCODE.NOERROR;
    let question: Buffer = Buffer.alloc(0);
    const answers: Buffer[] = [];
    if (opcode !== 0) {
      rcode = RCODE.NOTIMP;
    } else if (qdcount !== 1) {
      rcode = RCODE.FORMERR;
    } else {
      try {
        const { name, next } = readName(query, HEADER_LEN);
        if (next + 4 > query.length) throw new Malformed("truncated question");
        const qtype = query.readUInt16BE(next);
        const qclass = query.readUInt16BE(next + 2);
        // Echo the question byte for byte: c-ares checks that the answer is for the question it asked.
        question = query.subarray(HEADER_LEN, next + 4);
        const key = normalizeName(name);
        queries.push({ name: key, type: qtype });
        if (currentMode === "silent") return;
        if (currentMode === "servfail") {
          rcode = RCODE.SERVFAIL;
        } else {
          const records = table.get(key);
          if (records === undefined) rcode = RCODE.NXDOMAIN;
          else if (qclass === CLASS_IN) answers.push(...answersFor(records, qtype, currentTtl));
          // A known name without records of the asked type is NOERROR with no answer (NODATA).
        }
      } catch (err) {
        if (!(err instanceof Malformed)) throw err;
        rcode = RCODE.FORMERR;
        question = Buffer.alloc(0);
      }
    }
    const header = Buffer.alloc(HEADER_LEN);
    header.writeUInt16BE(query.readUInt16BE(0), 0);
    // QR=1, same opcode, AA=1 (we are the authority for the table), RD copied, RA=1.
    header.writeUInt16BE(0x8000 | (opcode << 11) | 0x0400 | (flags & 0x0100) | 0x0080 | rcode, 2);
    header.writeUInt16BE(question.length > 0 ? 1 : 0, 4);
    header.writeUInt16BE(answers.length, 6);
    socket.send(Buffer.concat([header, question, ...answers]), rinfo.port, rinfo.address);
  }

  socket.on("message", respond);
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(0, "127.0.0.1", () => {
      socket.off("error", reject);
      resolve();
    });
  });
  const port = socket.address().port;

  return {
    address: `127.0.0.1:${port}`,
    port,
    queries,
    set(name, records) {
      // Fail in the test that wrote a bad record, not later inside the resolver.
      for (const a of records.a ?? []) if (!isIPv4(a)) throw new Error(`not an IPv4 address: ${a}`);
      for (const a of records.aaaa ?? []) if (!isIPv6(a)) throw new Error(`not an IPv6 address: ${a}`);
      for (const r of records.srv ?? []) srvRdata(r);
      table.set(normalizeName(name), {
        a: [...(records.a ?? [])],
        aaaa: [...(records.aaaa ?? [])],
        srv: (records.srv ?? []).map((r) => ({ ...r })),
      });
    },
    remove(name) {
      table.delete(normalizeName(name));
    },
    mode(m) {
      currentMode = m;
    },
    ttl(seconds) {
      currentTtl = seconds;
    },
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

function answersFor(records: DnsRecords, qtype: number, ttl: number): Buffer[] {
  switch (qtype) {
    case QTYPE.A:
      return (records.a ?? []).map((a) => rr(QTYPE.A, ttl, encodeIPv4(a)));
    case QTYPE.AAAA:
      return (records.aaaa ?? []).map((a) => rr(QTYPE.AAAA, ttl, encodeIPv6(a)));
    case QTYPE.SRV:
      return (records.srv ?? []).map((r) => rr(QTYPE.SRV, ttl, srvRdata(r)));
    default:
      return [];
  }
}
