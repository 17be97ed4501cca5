/**
 * Counters and histograms for the per-request hot path. prom-client's bound children still
 * validate and hash their label values on every inc() and observe(); at saturation those calls
 * cost more than the rest of floodgate's own bookkeeping. These keep one series object per
 * label set, found once and then updated with a few array increments, and render in
 * prom-client's format at scrape time (they subclass its metrics, so they live in the same
 * registry and read the same in /metrics).
 */
import { Counter, Histogram, type MetricType, type Registry } from "prom-client";

export interface CounterSeries {
  inc(by?: number): void;
}

export interface HistogramSeries {
  observe(value: number): void;
}

interface Config<L extends string> {
  name: string;
  help: string;
  labelNames: readonly L[];
  registers: Registry[];
}

type Labels<L extends string> = Partial<Record<L, string>>;

function labelsOf<L extends string>(names: readonly L[], values: readonly string[]): Labels<L> {
  const labels: Labels<L> = {};
  names.forEach((n, i) => {
    labels[n] = values[i] ?? "";
  });
  return labels;
}

/**
 * Series by label values, found through one Map per label: a lookup builds no key string (a
 * joined key is a new string per call, hashed afresh; the label values themselves are the same
 * strings every time, their hashes cached).
 */
export class SeriesIndex<T> {
  private readonly root = new Map<string, unknown>();
  /** Every series, in creation order (the order they render in). */
  readonly all: T[] = [];

  get(values: readonly string[]): T | undefined {
    let node: Map<string, unknown> | undefined = this.root;
    const last = values.length - 1;
    for (let i = 0; i < last && node; i++)
      node = node.get(values[i] ?? "") as Map<string, unknown> | undefined;
    return node?.get(values[last] ?? "") as T | undefined;
  }

  add(values: readonly string[], series: T): T {
    let node = this.root;
    const last = values.length - 1;
    for (let i = 0; i < last; i++) {
      const value = values[i] ?? "";
      let next = node.get(value) as Map<string, unknown> | undefined;
      if (!next) {
        next = new Map<string, unknown>();
        node.set(value, next);
      }
      node = next;
    }
    node.set(values[last] ?? "", series);
    this.all.push(series);
    return series;
  }
}

class CounterEntry<L extends string> implements CounterSeries {
  value = 0;
  constructor(readonly labels: Labels<L>) {}
  inc(by = 1): void {
    this.value += by;
  }
}

export class FastCounter<L extends string> extends Counter<L> {
  private readonly series = new SeriesIndex<CounterEntry<L>>();
  private readonly names: readonly L[];

  constructor(config: Config<L>) {
    super({ ...config, labelNames: [...config.labelNames] });
    this.names = config.labelNames;
  }

  /** The series for these label values (in labelNames order); keep it, it does not change. */
  bind(...values: string[]): CounterSeries {
    return this.series.get(values) ?? this.series.add(values, new CounterEntry(labelsOf(this.names, values)));
  }

  override async get(): Promise<Awaited<ReturnType<Counter<L>["get"]>>> {
    const base = await super.get();
    return { ...base, values: this.series.all.map((s) => ({ labels: s.labels, value: s.value })) };
  }
}

class HistogramEntry<L extends string> implements HistogramSeries {
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(
    readonly labels: Labels<L>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Array<number>(bounds.length).fill(0);
  }
  observe(value: number): void {
    this.sum += value;
    this.count++;
    const bounds = this.bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= (bounds[i] as number)) {
        this.counts[i] = (this.counts[i] ?? 0) + 1;
        return;
      }
    }
  }
}

export class FastHistogram<L extends string> extends Histogram<L> {
  private readonly series = new SeriesIndex<HistogramEntry<L>>();
  private readonly names: readonly L[];

  constructor(
    private readonly config: Config<L>,
    private readonly bounds: readonly number[],
  ) {
    super({ ...config, labelNames: [...config.labelNames], buckets: [...bounds] });
    this.names = config.labelNames;
  }

  bind(...values: string[]): HistogramSeries {
    return (
      this.series.get(values) ??
      this.series.add(values, new HistogramEntry(labelsOf(this.names, values), this.bounds))
    );
  }

  /** The registry asks a histogram for this rather than get(): the same values. */
  async getForPromString(): Promise<Awaited<ReturnType<Histogram<L>["get"]>>> {
    return this.get();
  }

  // prom-client's own get() calls getForPromString(): this one must not call it back.
  override async get(): Promise<Awaited<ReturnType<Histogram<L>["get"]>>> {
    const values: Awaited<ReturnType<Histogram<L>["get"]>>["values"] = [];
    const name = this.config.name;
    for (const s of this.series.all) {
      let cumulative = 0;
      this.bounds.forEach((le, i) => {
        cumulative += s.counts[i] ?? 0;
        values.push({ metricName: `${name}_bucket`, labels: { le, ...s.labels }, value: cumulative });
      });
      values.push({ metricName: `${name}_bucket`, labels: { le: "+Inf", ...s.labels }, value: s.count });
      values.push({ metricName: `${name}_sum`, labels: s.labels, value: s.sum });
      values.push({ metricName: `${name}_count`, labels: s.labels, value: s.count });
    }
    // prom-client types MetricType as an enum but ships no runtime value for it: its own
    // metrics carry the plain string, as this one does.
    const type = "histogram" as unknown as MetricType;
    return { name, help: this.config.help, type, aggregator: "sum", collect: () => {}, values };
  }
}
