/** MemoryStore blobs and locks, on an injected clock: expiry, purge by prefix, the byte bound. */
import { afterEach, describe, expect, it } from "vitest";
import { MemoryStore, type MemoryStoreOptions } from "../../../src/store/memory-store.js";

let clock = 0;
let store: MemoryStore;
function fresh(options: MemoryStoreOptions = {}): MemoryStore {
  clock = 0;
  store = new MemoryStore({ now: () => clock, sweepIntervalMs: 0, ...options });
  return store;
}
afterEach(() => store?.close());

const bytes = (text: string) => Buffer.from(text);

describe("MemoryStore blobs", () => {
  it("sets, gets and expires on its clock; a rewrite replaces value and expiry", async () => {
    const s = fresh();
    expect(s.keyPrefix).toBe("");
    expect(await s.getBlob("c:none")).toBeUndefined();
    await s.setBlob("c:a", Buffer.from([0, 1, 0, 255]), 100);
    expect(await s.getBlob("c:a")).toEqual(Buffer.from([0, 1, 0, 255]));
    clock = 99;
    expect(await s.getBlob("c:a")).toBeDefined();
    clock = 100;
    expect(await s.getBlob("c:a")).toBeUndefined();
    expect(s.size().blobs).toBe(0);
    await s.setBlob("c:a", bytes("one"), 100);
    clock = 150;
    await s.setBlob("c:a", bytes("two"), 100);
    clock = 249;
    expect(await s.getBlob("c:a")).toEqual(bytes("two"));
    clock = 250;
    expect(await s.getBlob("c:a")).toBeUndefined();
  });

  it("keeps its own copy: neither the caller's buffer nor a returned one aliases it", async () => {
    const s = fresh();
    const value = bytes("abc");
    await s.setBlob("c:copy", value, 1000);
    value[0] = 0x7a;
    const got = await s.getBlob("c:copy");
    expect(got).toEqual(bytes("abc"));
    if (got !== undefined) got[1] = 0x7a;
    expect(await s.getBlob("c:copy")).toEqual(bytes("abc"));
  });

  it("deletes one blob; deleting a missing one is fine", async () => {
    const s = fresh();
    await s.setBlob("c:x", bytes("x"), 1000);
    await s.setBlob("c:y", bytes("y"), 1000);
    await s.deleteBlob("c:x");
    await s.deleteBlob("c:never");
    expect(await s.getBlob("c:x")).toBeUndefined();
    expect(await s.getBlob("c:y")).toEqual(bytes("y"));
  });

  it("rejects a ttl SET PX would refuse, rounds a fraction up", async () => {
    const s = fresh();
    for (const ttl of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      await expect(s.setBlob("c:bad", bytes("x"), ttl)).rejects.toThrow(RangeError);
      await expect(s.acquireLock("l:bad", "o", ttl)).rejects.toThrow(RangeError);
    }
    await s.setBlob("c:frac", bytes("x"), 0.2);
    clock = 0.9;
    expect(await s.getBlob("c:frac")).toBeDefined();
    clock = 1;
    expect(await s.getBlob("c:frac")).toBeUndefined();
  });

  it("purges by logical prefix: counts live blobs, leaves other keys, locks and buckets", async () => {
    const s = fresh();
    for (let i = 0; i < 20; i++) await s.setBlob(`cache:m1:${i}`, bytes(`v${i}`), 1000);
    await s.setBlob("cache:m1:short", bytes("s"), 10);
    await s.setBlob("cache:m2:0", bytes("other"), 1000);
    await s.setBlob("cachex", bytes("other"), 1000);
    await s.acquireLock("cache:m1:0", "owner", 1000);
    await s.take({ key: "cache:m1:bucket", ratePerSec: 1, burst: 5 }, 5);
    clock = 10;
    // 20 live, 1 expired: the expired one is removed but not counted.
    expect(await s.deleteBlobsByPrefix("cache:m1:")).toBe(20);
    expect(s.size().blobs).toBe(2);
    expect(await s.getBlob("cache:m1:3")).toBeUndefined();
    expect(await s.getBlob("cache:m2:0")).toEqual(bytes("other"));
    expect(await s.getBlob("cachex")).toEqual(bytes("other"));
    expect(await s.acquireLock("cache:m1:0", "another", 1000)).toBe(false);
    expect(await s.take({ key: "cache:m1:bucket", ratePerSec: 1, burst: 5 }, 0)).toMatchObject({
      remaining: 0.01,
    });
    expect(await s.deleteBlobsByPrefix("cache:m1:")).toBe(0);
    // The empty prefix is every blob.
    expect(await s.deleteBlobsByPrefix("")).toBe(2);
  });

  it("clear removes blobs and locks under the prefix too", async () => {
    const s = fresh();
    await s.setBlob("t:a", bytes("a"), 1000);
    await s.setBlob("u:a", bytes("a"), 1000);
    await s.acquireLock("t:a", "o", 1000);
    await s.clear("t:");
    expect(await s.getBlob("t:a")).toBeUndefined();
    expect(await s.getBlob("u:a")).toEqual(bytes("a"));
    expect(await s.acquireLock("t:a", "p", 1000)).toBe(true);
  });

  it("sweeps expired blobs and locks, so memory stays bounded", async () => {
    const s = fresh();
    for (let i = 0; i < 50; i++) await s.setBlob(`c:${i}`, bytes("0123456789"), 100 + i);
    for (let i = 0; i < 10; i++) await s.acquireLock(`l:${i}`, "o", 100);
    expect(s.size()).toMatchObject({ blobs: 50, blobBytes: 500, locks: 10 });
    clock = 125;
    s.sweep();
    expect(s.size()).toMatchObject({ blobs: 24, blobBytes: 240, locks: 0 });
    clock = 150;
    s.sweep();
    expect(s.size()).toMatchObject({ blobs: 0, blobBytes: 0 });
  });

  it("holds at most maxBlobBytes: the oldest written go first; too large is not kept", async () => {
    const s = fresh({ maxBlobBytes: 30 });
    await s.setBlob("c:1", Buffer.alloc(10), 1000);
    await s.setBlob("c:2", Buffer.alloc(10), 1000);
    await s.setBlob("c:3", Buffer.alloc(10), 1000);
    // A rewrite moves c:1 to the newest end.
    await s.setBlob("c:1", Buffer.alloc(10, 1), 1000);
    await s.setBlob("c:4", Buffer.alloc(15), 1000);
    expect(await s.getBlob("c:2")).toBeUndefined();
    expect(await s.getBlob("c:3")).toBeUndefined();
    expect(await s.getBlob("c:1")).toEqual(Buffer.alloc(10, 1));
    expect(s.size()).toMatchObject({ blobs: 2, blobBytes: 25 });
    // Larger than the whole budget: dropped, and the value it replaced is gone too.
    await s.setBlob("c:1", Buffer.alloc(31), 1000);
    expect(await s.getBlob("c:1")).toBeUndefined();
    expect(s.size()).toMatchObject({ blobs: 1, blobBytes: 15 });
  });
});

describe("MemoryStore locks", () => {
  it("NX: one holder at a time, the holder included; expiry frees it", async () => {
    const s = fresh();
    expect(await s.acquireLock("l:a", "one", 100)).toBe(true);
    expect(await s.acquireLock("l:a", "two", 100)).toBe(false);
    // Not reentrant, and a refused attempt does not extend the lock.
    expect(await s.acquireLock("l:a", "one", 1000)).toBe(false);
    expect(await s.acquireLock("l:b", "two", 100)).toBe(true);
    clock = 99;
    expect(await s.acquireLock("l:a", "two", 100)).toBe(false);
    clock = 100;
    expect(await s.acquireLock("l:a", "two", 100)).toBe(true);
  });

  it("a lock and a blob on one logical key do not collide", async () => {
    const s = fresh();
    await s.setBlob("k", bytes("body"), 1000);
    expect(await s.acquireLock("k", "o", 1000)).toBe(true);
    await s.setBlob("k", bytes("body2"), 1000);
    expect(await s.getBlob("k")).toEqual(bytes("body2"));
    await s.releaseLock("k", "o");
    expect(await s.getBlob("k")).toEqual(bytes("body2"));
  });

  it("is released only by its owner; a late release does not free a new holder's lock", async () => {
    const s = fresh();
    await s.acquireLock("l:r", "one", 100);
    await s.releaseLock("l:r", "two");
    expect(await s.acquireLock("l:r", "two", 100)).toBe(false);
    await s.releaseLock("l:r", "one");
    expect(await s.acquireLock("l:r", "two", 100)).toBe(true);
    clock = 100;
    expect(await s.acquireLock("l:r", "three", 100)).toBe(true);
    // "two" held it once, but its lock expired and "three" took over.
    await s.releaseLock("l:r", "two");
    expect(await s.acquireLock("l:r", "two", 100)).toBe(false);
    await s.releaseLock("l:none", "x");
  });
});
