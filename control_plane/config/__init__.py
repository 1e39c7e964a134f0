"""The configuration of Hapax: ``hapax.yaml`` -> immutable, typed objects.

Everything else in the control plane trusts these objects, so reading a file
is strict: unknown keys, wrong types and dangling references are errors. It
never stops at the first problem: a user fixing a file wants the whole list at
once, each with its key path (``providers.openai.type``, ``routes[2].path``).

Which module to import for what:

- ``model``: the dataclasses (``HapaxConfig``, ``ProviderConfig``, ...),
  ``FrozenMap`` and the constants (``PROVIDER_TYPES``, ``DEFAULT_ROUTES``, ...).
  Most code needs only this.
- ``errors``: ``ConfigIssue`` and ``ConfigError``.
- ``load``: ``parse_config``, ``load_config`` and ``summarize``.
- ``served``: ``route_lines``, the routes a config serves, listed for people.

The steps of reading a file, internal to this package (their ``_`` names are
shared between its modules, not meant for use outside it):

- ``yaml_loader``: YAML text -> plain data, with line numbers for syntax errors;
- ``env``: ``${VAR}`` / ``${VAR:-default}`` expansion of string values;
- ``validate``: plain data -> ``HapaxConfig``, collecting every issue.

This module re-exports the public API, so ``from control_plane.config import
HapaxConfig`` keeps working.
"""

from control_plane.config.errors import ConfigError, ConfigIssue
from control_plane.config.load import load_config, parse_config, summarize
from control_plane.config.model import (
    DEFAULT_BASE_URLS,
    DEFAULT_ROUTES,
    HANDLERS,
    PROVIDER_TYPES,
    CircuitBreakerConfig,
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
