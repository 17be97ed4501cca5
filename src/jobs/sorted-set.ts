/**
 * A sorted set of string members by number score, ordered as a Redis sorted set orders them:
 * by score, then by member (code-unit order, which is byte order for the ASCII ids the queue
 * uses). MemoryJobQueue keeps its indexes in these so that it hands jobs out in exactly the
 * order RedisJobQueue does, ties included.
 *
 * A list of sorted blocks of at most BLOCK items (a one-level B-tree): finding a place is two
 * binary searches, inserting or removing moves at most one block's items, so a batch of 50,000
 * jobs queued, cancelled or expired costs milliseconds, not the quadratic time of one sorted
 * array (every removal from its middle moving the whole tail).
 */

interface Item {
  member: string;
  score: number;
}

const BLOCK = 512;

function compare(a: Item, score: number, member: string): number {
  if (a.score !== score) return a.score < score ? -1 : 1;
  return a.member < member ? -1 : a.member > member ? 1 : 0;
}

/** The index of the first item of `items` not before (score, member). */
function lowerBound(items: readonly Item[], score: number, member: string): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compare(items[mid] as Item, score, member) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class SortedSet {
  /** Non-empty blocks, each sorted, each wholly before the next. */
  private blocks: Item[][] = [];
  private readonly scores = new Map<string, number>();

  get size(): number {
    return this.scores.size;
  }

  has(member: string): boolean {
    return this.scores.has(member);
  }

  /** Adds the member, or moves it to its new score. */
  add(member: string, score: number): void {
    this.delete(member);
    this.scores.set(member, score);
    const item = { member, score };
    if (this.blocks.length === 0) {
      this.blocks.push([item]);
      return;
    }
    const b = Math.min(this.blockOf(score, member), this.blocks.length - 1);
    const block = this.blocks[b] as Item[];
    block.splice(lowerBound(block, score, member), 0, item);
    if (block.length > 2 * BLOCK) this.blocks.splice(b, 1, block.slice(0, BLOCK), block.slice(BLOCK));
  }

  /** Adds many members at once; one already there moves to its new score. */
  addAll(entries: readonly (readonly [string, number])[]): void {
    for (const [member, score] of entries) this.add(member, score);
  }

  delete(member: string): boolean {
    const score = this.scores.get(member);
    if (score === undefined) return false;
    this.scores.delete(member);
    const b = this.blockOf(score, member);
    const block = this.blocks[b] as Item[];
    block.splice(lowerBound(block, score, member), 1);
    if (block.length === 0) this.blocks.splice(b, 1);
    return true;
  }

  /** Members with min ≤ score ≤ max, in order, at most `limit`. */
  range(min: number, max: number, limit = Number.POSITIVE_INFINITY): string[] {
    const out: string[] = [];
    for (let b = this.blockOf(min, ""); b < this.blocks.length; b++) {
      const block = this.blocks[b] as Item[];
      for (let i = lowerBound(block, min, ""); i < block.length; i++) {
        const item = block[i] as Item;
        if (item.score > max || out.length >= limit) return out;
        out.push(item.member);
      }
    }
    return out;
  }

  /** How many members have a score ≤ max. */
  countUpTo(max: number): number {
    let count = 0;
    for (const block of this.blocks) {
      const last = block[block.length - 1] as Item;
      if (last.score <= max) {
        count += block.length;
        continue;
      }
      let lo = 0;
      let hi = block.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if ((block[mid] as Item).score <= max) lo = mid + 1;
        else hi = mid;
      }
      return count + lo;
    }
    return count;
  }

  /** The first block whose last item is not before (score, member); blocks.length if none. */
  private blockOf(score: number, member: string): number {
    let lo = 0;
    let hi = this.blocks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const block = this.blocks[mid] as Item[];
      if (compare(block[block.length - 1] as Item, score, member) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
