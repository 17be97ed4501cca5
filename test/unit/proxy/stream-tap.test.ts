import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { StreamTap, type StreamTapOptions } from "../../../src/proxy/stream-tap.js";

const chunk = (content: string) =>
  JSON.stringify({ object: "chat.completion.chunk", choices: [{ index: 0, delta: { content } }] });
const USAGE = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 };
const usageOnly = JSON.stringify({ object: "chat.completion.chunk", choices: [], usage: USAGE });

/** Feeds the stream in the given pieces; returns what passed and the tap. */
function run(pieces: (string | Buffer)[], options: Partial<StreamTapOptions> = {}) {
  const tap = new StreamTap({ maxEventSize: 1 << 20, ...options });
  const out: Buffer[] = [];
  for (const p of pieces) out.push(tap.process(Buffer.isBuffer(p) ? p : Buffer.from(p)));
  out.push(tap.end());
  return { tap, text: Buffer.concat(out).toString("utf8") };
}

/** Cuts `text` at the given byte offsets. */
function cut(text: string, at: number[]): Buffer[] {
  const bytes = Buffer.from(text);
  const points = [...new Set(at.map((a) => a % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    out.push(bytes.subarray(from, p));
    from = p;
  }
  out.push(bytes.subarray(from));
  return out;
}

describe("StreamTap", () => {
  it.each([
    ["LF", "\n"],
    ["CRLF", "\r\n"],
    ["CR", "\r"],
  ])("%s line ends: the bytes pass exactly and [DONE] is seen", (_name, eol) => {
    const text = `data: ${chunk("a")}${eol}${eol}: comment${eol}data: ${chunk("b")}${eol}${eol}data: [DONE]${eol}${eol}`;
    const { tap, text: out } = run([text]);
    expect(out).toBe(text);
    expect(tap.done).toBe(true);
  });

  it("a last event with no empty line after it still passes and counts", () => {
    for (const end of ["data: [DONE]\n", "data: [DONE]", "data: [DONE]\r"]) {
      const text = `data: ${chunk("a")}\n\n${end}`;
      const { tap, text: out } = run([text]);
      expect(out).toBe(text);
      expect(tap.done).toBe(true);
    }
  });

  it("a CRLF split across two chunks is one line end, not an empty line", () => {
    const { tap, text } = run([`data: ${chunk("a")}\r`, `\n\r`, `\ndata: [DONE]\r`, "\n\r\n"]);
    expect(text).toBe(`data: ${chunk("a")}\r\n\r\ndata: [DONE]\r\n\r\n`);
    expect(tap.done).toBe(true);
  });

  it("data: [DONE] is the whole payload only: text mentioning it is not the end", () => {
    expect(run(['data: {"x":"[DONE]"}\n\n']).tap.done).toBe(false);
    expect(run(["data: [DONE] \n\n"]).tap.done).toBe(false);
    expect(run(["data:[DONE]\n\n"]).tap.done).toBe(true);
  });

  it("reads usage, and drops the usage-only chunk only when asked to", () => {
    const text = `data: ${chunk("a")}\n\ndata: ${usageOnly}\n\ndata: [DONE]\n\n`;
    const kept = run([text]);
    expect(kept.text).toBe(text);
    expect(kept.tap.total).toBe(5);
    const stripped = run([text], { strip: true });
    expect(stripped.text).toBe(`data: ${chunk("a")}\n\ndata: [DONE]\n\n`);
    expect(stripped.tap.total).toBe(5);
    expect(stripped.tap.usage).toEqual(USAGE);
  });

  it("records payloads (multi-line data joined by LF) and stops past its limit", () => {
    const text = `data: ${chunk("a")}\n\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n`;
    const { tap } = run([text], { recordLimit: 10_000 });
    expect(tap.events?.map((e) => e.data)).toEqual([chunk("a"), "line1\nline2"]);
    const small = run([text], { recordLimit: 20 });
    expect(small.tap.events).toBeUndefined();
    expect(small.text).toBe(text); // the stream itself goes on whole
  });

  it("an event past maxEventSize passes through as it arrives, unparsed; the next is parsed again", () => {
    const big = `data: ${"x".repeat(5000)}`;
    const tap = new StreamTap({ maxEventSize: 1000, strip: true });
    const passed: string[] = [];
    passed.push(tap.process(Buffer.from(big.slice(0, 3000))).toString());
    // Held no more than the bound: what exceeded it went out at once.
    expect(passed[0]).toBe(big.slice(0, 3000));
    passed.push(tap.process(Buffer.from(`${big.slice(3000)}\n\ndata: ${usageOnly}\n\n`)).toString());
    passed.push(tap.process(Buffer.from("data: [DONE]\n\n")).toString());
    passed.push(tap.end().toString());
    expect(passed.join("")).toBe(`${big}\n\ndata: [DONE]\n\n`);
    expect(tap.total).toBe(5);
    expect(tap.done).toBe(true);
  });

  it("holds an incomplete event until its empty line, and no byte longer", () => {
    const tap = new StreamTap({ maxEventSize: 1 << 20 });
    expect(tap.process(Buffer.from(`data: ${chunk("a")}`)).length).toBe(0);
    expect(tap.process(Buffer.from("\n")).length).toBe(0);
    expect(tap.process(Buffer.from("\n")).toString()).toBe(`data: ${chunk("a")}\n\n`);
  });

  it("a 20 MB line costs one pass: chunks are scanned once, not rescanned", () => {
    const tap = new StreamTap({ maxEventSize: 1 << 20 });
    const piece = Buffer.alloc(64 * 1024, 0x61);
    let passed = tap.process(Buffer.from("data: ")).length;
    for (let i = 0; i < 320; i++) passed += tap.process(piece).length;
    passed += tap.process(Buffer.from("\n\ndata: [DONE]\n\n")).length;
    expect(passed).toBe(6 + 320 * piece.length + 16);
    expect(tap.done).toBe(true);
  });

  it("whatever the chunking, the output and what is read are the same (property)", () => {
    const eol = fc.constantFrom("\n", "\r\n", "\r");
    const event = fc.oneof(
      fc.string({ maxLength: 20 }).map((s) => `data: ${chunk(s)}`),
      fc.constant(`data: ${usageOnly}`),
      fc.constant(": keep-alive"),
      fc.constant("event: ping\ndata: {}"),
    );
    fc.assert(
      fc.property(
        fc.array(fc.tuple(event, eol), { maxLength: 8 }),
        eol,
        fc.array(fc.nat(), { maxLength: 12 }),
        fc.boolean(),
        (events, lastEol, cuts, strip) => {
          const text = `${events.map(([e, l]) => `${e.replaceAll("\n", l)}${l}${l}`).join("")}data: [DONE]${lastEol}${lastEol}`;
          const whole = run([text], { strip, recordLimit: 1 << 20 });
          const pieces = run(cut(text, cuts), { strip, recordLimit: 1 << 20 });
          expect(pieces.text).toBe(whole.text);
          expect(pieces.tap.done).toBe(true);
          expect(pieces.tap.total).toBe(whole.tap.total);
          expect(pieces.tap.events?.map((e) => e.data)).toEqual(whole.tap.events?.map((e) => e.data));
          if (!strip) expect(whole.text).toBe(text);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it("multi-byte characters split across chunks are decoded whole", () => {
    const text = `data: ${chunk("héllo wörld 😀")}\n\ndata: [DONE]\n\n`;
    const bytes = Buffer.from(text);
    const pieces = [];
    for (let i = 0; i < bytes.length; i += 3) pieces.push(bytes.subarray(i, i + 3));
    const { tap, text: out } = run(pieces, { recordLimit: 1 << 20 });
    expect(out).toBe(text);
    expect(tap.events?.[0]?.data).toBe(chunk("héllo wörld 😀"));
  });
});
