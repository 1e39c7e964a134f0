"""The configuration of Hapax: ``hapax.yaml`` -> immutable, typed objects.

For now everything lives in ``validate``; this package re-exports its public API.
"""

from control_plane.config.validate import (
    DEFAULT_BASE_URLS,
    DEFAULT_ROUTES,
    HANDLERS,
    PROVIDER_TYPES,
    CircuitBreakerConfig,
    ConfigError,
    ConfigIssue,
    ExtProcConfig,
    FrozenMap,
    HapaxConfig,
    HealthCheckConfig,
    Http3Config,
    LoggingConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    ServerConfig,
    load_config,
    parse_config,
    summarize,
)

__all__ = [
    "DEFAULT_BASE_URLS",
    "DEFAULT_ROUTES",
    "HANDLERS",
    "PROVIDER_TYPES",
    "CircuitBreakerConfig",
    "ConfigError",
    "ConfigIssue",
    "ExtProcConfig",
    "FrozenMap",
    "HapaxConfig",
    "HealthCheckConfig",
    "Http3Config",
    "LoggingConfig",
    "ProviderConfig",
    "RetryConfig",
    "RouteConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
    "summarize",
]
