/**
 * A sorted set of string members by number score, ordered as a Redis sorted set orders them:
 * by score, then by member (code-unit order, which is byte order for the ASCII ids the queue
 * uses). MemoryJobQueue keeps its indexes in these so that it hands jobs out in exactly the
 * order RedisJobQueue does, ties included.
 *
 * A sorted array with binary search: insertion and removal move the tail (memmove-fast for
 * the tens of thousands of lines of a batch); `addAll` appends and sorts once, so a batch of
 * 50,000 jobs is not 50,000 insertions at random places.
 */

interface Item {
  member: string;
  score: number;
}

function before(a: Item, score: number, member: string): boolean {
  return a.score < score || (a.score === score && a.member < member);
}

export class SortedSet {
  private items: Item[] = [];
  private readonly scores = new Map<string, number>();

  get size(): number {
    return this.items.length;
  }

  has(member: string): boolean {
    return this.scores.has(member);
  }

  /** Adds the member, or moves it to its new score. */
  add(member: string, score: number): void {
    this.delete(member);
    const at = this.lowerBound(score, member);
    this.items.splice(at, 0, { member, score });
    this.scores.set(member, score);
  }

  /** Adds many members at once (sorting once); a member already there moves to its new score. */
  addAll(entries: readonly (readonly [string, number])[]): void {
    if (entries.length < 16) {
      for (const [member, score] of entries) this.add(member, score);
      return;
    }
    for (const [member] of entries) this.delete(member);
    for (const [member, score] of entries) {
      this.items.push({ member, score });
      this.scores.set(member, score);
    }
    this.items.sort((a, b) => a.score - b.score || (a.member < b.member ? -1 : a.member > b.member ? 1 : 0));
  }

  delete(member: string): boolean {
    const score = this.scores.get(member);
    if (score === undefined) return false;
    const at = this.lowerBound(score, member);
    this.items.splice(at, 1);
    this.scores.delete(member);
    return true;
  }

  /** Members with min ≤ score ≤ max, in order, at most `limit`. */
  range(min: number, max: number, limit = Number.POSITIVE_INFINITY): string[] {
    const out: string[] = [];
    for (let i = this.lowerBound(min, ""); i < this.items.length && out.length < limit; i++) {
      const item = this.items[i] as Item;
      if (item.score > max) break;
      out.push(item.member);
    }
    return out;
  }

  /** How many members have a score ≤ max. */
  countUpTo(max: number): number {
    let lo = 0;
    let hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.items[mid] as Item).score <= max) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The index of the first item not before (score, member). */
  private lowerBound(score: number, member: string): number {
    let lo = 0;
    let hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (before(this.items[mid] as Item, score, member)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
