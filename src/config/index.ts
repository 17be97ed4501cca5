export { ConfigError, type ConfigIssue, formatIssues, formatPath } from "./issues.js";
export { loadConfigFile, parseConfig } from "./load.js";
export type {
  BackendConfig,
  CacheConfig,
  CircuitBreakerConfig,
  Engine,
  GatewayConfig,
  HealthCheckConfig,
  OutlierDetectionConfig,
  PoolConfig,
  RateLimitConfig,
  RateSpecConfig,
  RetryConfig,
  RouteConfig,
  SlowStartConfig,
  StoreErrorPolicyConfig,
  TenantConfig,
  TimeoutsConfig,
} from "./schema.js";
export { backendName, sha256Hex } from "./semantics.js";
export { formatDuration, parseDuration, parseSize } from "./units.js";
