/** Files in the store in chunks (src/jobs/files.ts), on a real MemoryStore. */
import { createHash } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { FileGoneError, FileLimitError, FileStore, newFileId } from "../../../src/jobs/files.js";
import { MemoryStore } from "../../../src/store/index.js";

async function* pieces(buffer: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let at = 0; at < buffer.length; at += size) yield buffer.subarray(at, at + size);
}

async function read(files: FileStore, id: string): Promise<Buffer> {
  const file = await files.get(id);
  if (file === undefined) throw new Error("no file");
  const out: Buffer[] = [];
  for await (const chunk of files.content(file)) out.push(chunk);
  return Buffer.concat(out);
}

const spec = (over: Partial<Parameters<FileStore["upload"]>[0]> = {}) => ({
  id: newFileId(),
  tenant: "t",
  filename: "f.jsonl",
  purpose: "batch",
  ttlMs: 60_000,
  ...over,
});

describe("FileStore", () => {
  it("gives back the bytes written, whatever the chunk and piece sizes", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 3000 }),
        fc.integer({ min: 1, max: 700 }),
        fc.integer({ min: 1, max: 500 }),
        async (bytes, chunkBytes, pieceBytes) => {
          const store = new MemoryStore({ sweepIntervalMs: 0 });
          const files = new FileStore(store, chunkBytes);
          const data = Buffer.from(bytes);
          const file = await files.upload(spec(), pieces(data, pieceBytes));
          expect(file.bytes).toBe(data.length);
          expect(file.chunks).toBe(Math.ceil(data.length / chunkBytes));
          expect((await read(files, file.id)).equals(data)).toBe(true);
          // Every chunk and the metadata: no value larger than a chunk.
          expect(store.size().blobs).toBe(file.chunks + 1);
        },
      ),
    );
  });

  it("a multi-MiB file in 1 MiB chunks comes back byte-exact", async () => {
    const store = new MemoryStore({ sweepIntervalMs: 0, maxBlobBytes: Number.POSITIVE_INFINITY });
    const files = new FileStore(store);
    const data = Buffer.alloc(3 * 1024 * 1024 + 12345);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7919) & 0xff;
    const file = await files.upload(spec(), pieces(data, 64 * 1024));
    expect(file.chunks).toBe(4);
    const back = await read(files, file.id);
    expect(createHash("sha256").update(back).digest("hex")).toBe(
      createHash("sha256").update(data).digest("hex"),
    );
  });

  it("counts the lines that hold anything but white space", async () => {
    const files = new FileStore(new MemoryStore({ sweepIntervalMs: 0 }), 4);
    const text = "a\n\n  \r\n{}\r\nb";
    const file = await files.upload(spec(), pieces(Buffer.from(text), 3));
    expect(file.lines).toBe(3);
  });

  it("an upload over its byte or line limit leaves nothing behind", async () => {
    const store = new MemoryStore({ sweepIntervalMs: 0 });
    const files = new FileStore(store, 10);
    const big = spec({ maxBytes: 25 });
    await expect(files.upload(big, pieces(Buffer.alloc(26, 0x61), 4))).rejects.toMatchObject({
      limit: "bytes",
      max: 25,
    });
    expect(await files.get(big.id)).toBeUndefined();
    const long = spec({ maxLines: 2 });
    await expect(files.upload(long, pieces(Buffer.from("a\nb\nc"), 4))).rejects.toBeInstanceOf(
      FileLimitError,
    );
    expect(store.size().blobs).toBe(0);
    // Exactly at the limits is fine.
    const ok = await files.upload(spec({ maxBytes: 5, maxLines: 3 }), pieces(Buffer.from("a\nb\nc"), 2));
    expect(ok.lines).toBe(3);
  });

  it("a missing chunk is an error, never a short file", async () => {
    const store = new MemoryStore({ sweepIntervalMs: 0 });
    const files = new FileStore(store, 4);
    const file = await files.upload(spec(), pieces(Buffer.from("0123456789"), 10));
    await store.deleteBlob(`files:${file.id}:1`);
    await expect(read(files, file.id)).rejects.toBeInstanceOf(FileGoneError);
  });

  it("delete removes the metadata and every chunk; expiry removes the file", async () => {
    let now = 1_000_000;
    const store = new MemoryStore({ sweepIntervalMs: 0, now: () => now });
    const files = new FileStore(store, 4, () => now);
    const file = await files.upload(spec(), pieces(Buffer.from("0123456789"), 10));
    await files.delete(file);
    expect(await files.get(file.id)).toBeUndefined();
    expect(store.size().blobs).toBe(0);
    const kept = await files.upload(spec({ ttlMs: 1000 }), pieces(Buffer.from("abc"), 10));
    now += 999;
    expect(await files.get(kept.id)).toBeDefined();
    now += 1;
    expect(await files.get(kept.id)).toBeUndefined();
    store.sweep();
    expect(store.size().blobs).toBe(0);
  });
});
