/** A named group of interchangeable backends serving the same models. */
import type { PoolConfig } from "../config/index.js";
import { Backend } from "./backend.js";
import { type Balancer, createBalancer } from "./balancer.js";

export class UpstreamPool {
  readonly backends: Backend[];
  readonly balancer: Balancer;

  constructor(
    readonly name: string,
    readonly config: PoolConfig,
  ) {
    this.backends = config.backends.map((b) => new Backend(b, config.timeouts));
    this.balancer = createBalancer(config.balancer);
  }

  pick(): Backend | undefined {
    return this.balancer.pick(this.backends);
  }

  async close(): Promise<void> {
    await Promise.all(this.backends.map((b) => b.close()));
  }
}

/** All pools, and the model → pool index the OpenAI routes use. */
export class Upstreams {
  readonly pools = new Map<string, UpstreamPool>();
  private readonly byModel = new Map<string, UpstreamPool>();

  constructor(pools: Record<string, PoolConfig>) {
    for (const [name, config] of Object.entries(pools)) {
      const pool = new UpstreamPool(name, config);
      this.pools.set(name, pool);
      for (const model of config.models) this.byModel.set(model, pool);
    }
  }

  forModel(model: string): UpstreamPool | undefined {
    return this.byModel.get(model);
  }

  models(): { model: string; pool: string }[] {
    return [...this.byModel].map(([model, pool]) => ({ model, pool: pool.name }));
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.close()));
  }
}
