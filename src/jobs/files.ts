/**
 * Files of the OpenAI Files API (POST /v1/files, purpose `batch`) kept in the store.
 *
 * A file is cut into chunks of 1 MiB, each its own blob (`files:<id>:<n>`), plus a metadata blob
 * (`files:<id>:meta`) written last: a reader sees a file whole or not at all, and no store value
 * is ever larger than a chunk, so a 200 MB upload never becomes one Redis value (Redis caps a
 * string at 512 MB, and one huge value blocks the server while it is written, read or
 * replicated). The chunks live where the rest of the shared state lives: with `store: redis`
 * every replica reads a file any replica received, with `store: memory` it is this process's.
 *
 * Uploads are written as they arrive, a chunk at a time, so memory holds about one chunk per
 * upload, never the file. Every blob of a file
 * expires at the file's expiresAt. A chunk write or read is idempotent, so a store timeout is
 * retried a few times: a 1 MiB value can miss the command budget meant for a limit check on a
 * busy Redis without anything being wrong.
 */
import { randomBytes } from "node:crypto";
import { type Store, StoreUnavailableError } from "../store/types.js";

/** The size of every chunk but a file's last. */
export const CHUNK_BYTES = 1024 * 1024;

export interface StoredFile {
  id: string;
  /** The tenant id that uploaded it ("" without API keys): only it may see the file. */
  tenant: string;
  filename: string;
  purpose: string;
  bytes: number;
  /** Lines holding anything but white space (a batch file's requests). */
  lines: number;
  chunks: number;
  /** Epoch ms. */
  createdAt: number;
  expiresAt: number;
}

/** An upload over one of its limits: nothing of it is kept. */
export class FileLimitError extends Error {
  constructor(
    readonly limit: "bytes" | "lines",
    readonly max: number,
  ) {
    super(`file over its ${limit} limit of ${max}`);
    this.name = "FileLimitError";
  }
}

/** A chunk of a stored file is missing (expired, evicted by the store, deleted meanwhile). */
export class FileGoneError extends Error {
  constructor(readonly id: string) {
    super(`file ${id}: a chunk is missing from the store`);
    this.name = "FileGoneError";
  }
}

export interface NewFile {
  id: string;
  tenant: string;
  filename: string;
  purpose: string;
  ttlMs: number;
  /** Bytes at most (FileLimitError beyond); unbounded when absent. */
  maxBytes?: number;
  /** Non-blank lines at most (FileLimitError beyond); unbounded when absent. */
  maxLines?: number;
}

/** An unguessable file id (128 random bits), as OpenAI spells them: `file-…`. */
export function newFileId(): string {
  return `file-${randomBytes(16).toString("hex")}`;
}

const metaKey = (id: string) => `files:${id}:meta`;
const chunkKey = (id: string, n: number) => `files:${id}:${n}`;

/** A store call retried on timeouts: for calls that may be repeated without harm (reads, SETs). */
export async function retrying<T>(call: () => Promise<T>, attempts = 3): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (err) {
      if (!(err instanceof StoreUnavailableError) || attempt >= attempts) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
    }
  }
}

export class FileStore {
  constructor(
    private readonly store: Store,
    private readonly chunkBytes = CHUNK_BYTES,
    private readonly now: () => number = Date.now,
  ) {}

  /** A file written a piece at a time; it exists for readers once end() has resolved. */
  writer(spec: NewFile): FileWriter {
    return new FileWriter(this.store, spec, this.chunkBytes, this.now);
  }

  /**
   * Writes everything `body` yields as one file (see writer()); nothing is kept on an error.
   * Past a limit the rest of the body is still read, and dropped, before FileLimitError is
   * thrown: an upload's sender gets the refusal instead of a connection torn under it.
   */
  async upload(spec: NewFile, body: AsyncIterable<Buffer>): Promise<StoredFile> {
    const writer = this.writer(spec);
    let refused: FileLimitError | undefined;
    try {
      for await (const piece of body) {
        if (refused !== undefined) continue;
        try {
          await writer.write(piece);
        } catch (err) {
          if (!(err instanceof FileLimitError)) throw err;
          refused = err;
          await writer.abort();
        }
      }
      if (refused !== undefined) throw refused;
      return await writer.end();
    } catch (err) {
      await writer.abort();
      throw err;
    }
  }

  async get(id: string): Promise<StoredFile | undefined> {
    const raw = await retrying(() => this.store.getBlob(metaKey(id)));
    if (raw === undefined) return undefined;
    return JSON.parse(raw.toString("utf8")) as StoredFile;
  }

  /**
   * The file's bytes, a chunk at a time, with the next chunk read while the caller handles this
   * one. Throws FileGoneError where a chunk is missing: a short file is never passed off as whole.
   */
  async *content(file: StoredFile): AsyncGenerator<Buffer> {
    const read = async (n: number): Promise<Buffer> => {
      const chunk = await retrying(() => this.store.getBlob(chunkKey(file.id, n)));
      if (chunk === undefined) throw new FileGoneError(file.id);
      return chunk;
    };
    let next: Promise<Buffer> | undefined = file.chunks > 0 ? read(0) : undefined;
    for (let n = 0; next !== undefined; n++) {
      const chunk: Buffer = await next;
      next = n + 1 < file.chunks ? read(n + 1) : undefined;
      // A reader that stops early leaves the read ahead unawaited: it must not become an
      // unhandled rejection.
      next?.catch(() => undefined);
      yield chunk;
    }
  }

  /** Deletes the file: the metadata first, so it is gone for readers before its chunks are. */
  async delete(file: StoredFile): Promise<void> {
    await retrying(() => this.store.deleteBlob(metaKey(file.id)));
    await deleteChunks(this.store, file.id, file.chunks);
  }
}

async function deleteChunks(store: Store, id: string, count: number): Promise<void> {
  for (let n = 0; n < count; n++) await retrying(() => store.deleteBlob(chunkKey(id, n)));
}

const NEWLINE = 0x0a;

/** Space, tab, carriage return: a line of only these is blank. */
function blank(byte: number | undefined): boolean {
  return byte === 0x20 || byte === 0x09 || byte === 0x0d;
}

export class FileWriter {
  private readonly expiresAt: number;
  private readonly createdAt: number;
  private buffer: Buffer;
  private filled = 0;
  private chunks = 0;
  private bytes = 0;
  private lines = 0;
  /** The line being read has something but white space in it. */
  private lineHasContent = false;
  private done = false;

  constructor(
    private readonly store: Store,
    private readonly spec: NewFile,
    private readonly chunkBytes: number,
    private readonly now: () => number,
  ) {
    this.createdAt = now();
    this.expiresAt = this.createdAt + spec.ttlMs;
    this.buffer = Buffer.allocUnsafe(chunkBytes);
  }

  /** Adds `data` to the file; throws FileLimitError past a limit (then abort() it). */
  async write(data: Buffer): Promise<void> {
    if (this.done) throw new Error("write after end");
    this.bytes += data.length;
    const maxBytes = this.spec.maxBytes;
    if (maxBytes !== undefined && this.bytes > maxBytes) throw new FileLimitError("bytes", maxBytes);
    this.countLines(data);
    let offset = 0;
    while (offset < data.length) {
      const taken = data.copy(this.buffer, this.filled, offset);
      this.filled += taken;
      offset += taken;
      if (this.filled === this.chunkBytes) await this.flush();
    }
  }

  /** Stores the last chunk and the metadata: from now on the file exists. */
  async end(): Promise<StoredFile> {
    if (this.lineHasContent) {
      this.lines++;
      this.lineHasContent = false;
      this.checkLines();
    }
    if (this.filled > 0) await this.flush();
    this.done = true;
    const file: StoredFile = {
      id: this.spec.id,
      tenant: this.spec.tenant,
      filename: this.spec.filename,
      purpose: this.spec.purpose,
      bytes: this.bytes,
      lines: this.lines,
      chunks: this.chunks,
      createdAt: this.createdAt,
      expiresAt: this.expiresAt,
    };
    await retrying(() => this.store.setBlob(metaKey(file.id), Buffer.from(JSON.stringify(file)), this.ttl()));
    return file;
  }

  /** Forgets the chunks written so far (best effort: they expire with the file anyway). */
  async abort(): Promise<void> {
    this.done = true;
    await deleteChunks(this.store, this.spec.id, this.chunks).catch(() => undefined);
  }

  private async flush(): Promise<void> {
    const chunk = this.buffer.subarray(0, this.filled);
    // A fresh buffer for the next chunk, never this one refilled: a write that timed out may
    // still be queued on the Redis connection, holding this memory until it is sent.
    this.buffer = Buffer.allocUnsafe(this.chunkBytes);
    this.filled = 0;
    const key = chunkKey(this.spec.id, this.chunks);
    await retrying(() => this.store.setBlob(key, chunk, this.ttl()));
    this.chunks++;
  }

  /** Every blob of the file ends at the same moment, whenever it was written. */
  private ttl(): number {
    return Math.max(1, this.expiresAt - this.now());
  }

  private countLines(data: Buffer): void {
    let start = 0;
    while (start < data.length) {
      const nl = data.indexOf(NEWLINE, start);
      const end = nl === -1 ? data.length : nl;
      // A request line starts with `{`: the scan for content stops at once but on blank lines.
      for (let i = start; i < end && !this.lineHasContent; i++)
        if (!blank(data[i])) this.lineHasContent = true;
      if (nl === -1) return;
      if (this.lineHasContent) {
        this.lines++;
        this.lineHasContent = false;
        this.checkLines();
      }
      start = nl + 1;
    }
  }

  private checkLines(): void {
    const max = this.spec.maxLines;
    if (max !== undefined && this.lines > max) throw new FileLimitError("lines", max);
  }
}
