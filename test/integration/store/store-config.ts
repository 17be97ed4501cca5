/** A complete `store` config section for tests (the schema's defaults, then overrides). */
import type { GatewayConfig } from "../../../src/config/schema.js";

export type StoreConfig = GatewayConfig["store"];

export function redisStoreConfig(overrides: Partial<StoreConfig>): StoreConfig {
  return {
    type: "redis",
    sentinelName: "mymaster",
    keyPrefix: "floodgate-test:",
    commandTimeout: 200,
    connectTimeout: 500,
    replicas: 1,
    breaker: { failures: 3, resetTimeout: 2000 },
    ...overrides,
  };
}
