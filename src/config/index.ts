export {
  ConfigError,
  type ConfigIssue,
  type ConfigWarning,
  formatIssues,
  formatPath,
  formatWarning,
} from "./issues.js";
export { loadConfigFile, parseConfig } from "./load.js";
export { type ModelMatcher, modelMatcher } from "./model-patterns.js";
export type {
  AdmissionConfig,
  AffinityConfig,
  BackendConfig,
  CacheConfig,
  CircuitBreakerConfig,
  Engine,
  GatewayConfig,
  HealthCheckConfig,
  JobsConfig,
  MicroBatchConfig,
  OutlierDetectionConfig,
  PoolConfig,
  Priority,
  RateLimitConfig,
  RateSpecConfig,
  RetryConfig,
  RouteConfig,
  SlowStartConfig,
  StoreErrorPolicyConfig,
  TenantConfig,
  TimeoutsConfig,
} from "./schema.js";
export { backendName, configWarnings, sha256Hex } from "./semantics.js";
export { formatDuration, parseDuration, parseSize } from "./units.js";
