/**
 * At most N requests in flight per tenant across all replicas, held as leases in the shared
 * store. A lease expires `leaseTtl` after its replica last renewed it (renewed every third of
 * that while the request runs), so a replica that dies cannot leak a tenant's slots for ever.
 */
import { randomUUID } from "node:crypto";
import type { Tenant } from "../auth/api-keys.js";
import type { GatewayConfig, StoreErrorPolicyConfig } from "../config/index.js";
import { errors } from "../errors.js";
import type { DecisionSource, GuardedStore } from "./guarded-store.js";

const LIMIT_NAME = "tenant.concurrency";

export interface ConcurrencyEvents {
  decided?(limit: string, tenant: string, allowed: boolean): void;
}

export class ConcurrencyLimits {
  private readonly limits = new Map<string, { max: number; policy: StoreErrorPolicyConfig }>();

  constructor(
    config: GatewayConfig,
    private readonly guard: GuardedStore,
    private readonly events: ConcurrencyEvents = {},
  ) {
    this.leaseTtl = config.tokens.leaseTtl;
    for (const [tenant, settings] of Object.entries(config.tenants)) {
      const max = settings.limits.concurrency;
      if (max !== undefined) this.limits.set(tenant, { max, policy: settings.limits.onStoreError });
    }
  }

  private readonly leaseTtl: number;

  /** Some tenant has one: the stage is on. */
  get enabled(): boolean {
    return this.limits.size > 0;
  }

  has(tenant: Tenant | undefined): boolean {
    return tenant !== undefined && this.limits.has(tenant.id);
  }

  /** A lease on one of the tenant's slots, or the 429 when all are taken. */
  async acquire(tenant: Tenant): Promise<Lease | undefined> {
    const limit = this.limits.get(tenant.id);
    if (!limit) return undefined;
    const key = `cc:tenant:${tenant.id}`;
    const id = randomUUID();
    const r = await this.guard.acquireLease(key, id, limit.max, this.leaseTtl, LIMIT_NAME, limit.policy);
    this.events.decided?.(LIMIT_NAME, tenant.id, r.acquired);
    if (!r.acquired) {
      throw errors.rateLimited("concurrency", `${limit.max} requests in flight at most`, 1000);
    }
    return new Lease(this.guard, r.source, key, id, this.leaseTtl);
  }
}

export class Lease {
  private readonly timer: NodeJS.Timeout;
  private released = false;

  constructor(
    private readonly guard: GuardedStore,
    private readonly source: DecisionSource,
    private readonly key: string,
    private readonly id: string,
    ttlMs: number,
  ) {
    this.timer = setInterval(() => void this.guard.renewLease(source, key, id, ttlMs), ttlMs / 3);
    this.timer.unref();
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    void this.guard.releaseLease(this.source, this.key, this.id);
  }
}
