/**
 * A complete `store` config section for tests (the schema's defaults, then overrides). The
 * deadlines are generous: a loaded machine must not turn a healthy Redis into a timeout. Tests
 * of the deadlines themselves set a short commandTimeout against a Redis that cannot answer.
 */
import type { GatewayConfig } from "../../../src/config/schema.js";

export type StoreConfig = GatewayConfig["store"];

export function redisStoreConfig(overrides: Partial<StoreConfig>): StoreConfig {
  return {
    type: "redis",
    sentinelName: "mymaster",
    keyPrefix: "floodgate-test:",
    commandTimeout: 5000,
    connectTimeout: 5000,
    replicas: 1,
    breaker: { failures: 3, resetTimeout: 2000 },
    slots: { shared: true, sync: 100, lease: 3000 },
    ...overrides,
  };
}
