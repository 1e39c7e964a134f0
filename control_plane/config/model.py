"""The configuration model of Hapax: immutable, typed objects and their constants.

Everything else in the control plane trusts these objects; ``validate`` makes
sure a file can only become one when it is valid. The dataclasses are frozen
and hashable (``FrozenMap`` stands in for ``dict``), so a config can be shared
and compared freely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from control_plane.config.errors import ConfigIssue
from control_plane.pricing import DEFAULT_PRICES, ModelPrice
from control_plane.tls import Certificate
from hapax import wire
from hapax.client_keys import KeyLine

PROVIDER_TYPES = ("anthropic", "ollama", "openai")
HANDLERS = tuple(handler.value for handler in wire.Handler)
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama": "http://localhost:11434",
}
DEFAULT_TIMEOUT = 60.0
FAMILIES = tuple(family.value for family in wire.ModelFamily)
# What each type's API serves: a provider's ``model`` alone (no ``models``) serves all of it, as
# it always has. Anthropic's API has no embeddings.
TYPE_FAMILIES: Mapping[str, tuple[str, ...]] = {
    "openai": FAMILIES,
    "ollama": FAMILIES,
    "anthropic": (wire.ModelFamily.CHAT,),
}
HEALTH_PATH = wire.HEALTH_PATH

# Hapax sets these labels itself on every series; a route may not override them.
RESERVED_LABELS = ("provider", "model", "route", "status", "status_class", "outcome", "handler",
                   "gen_ai_token_type", "version", "result", "le", "quantile", *wire.EXPERIMENT_LABELS)
MAX_LABELS = 8  # every label multiplies the number of time series
MAX_LABEL_VALUE_LENGTH = 64
MAX_WORKERS = 64
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """A read-only, hashable, ordered mapping.

    Frozen dataclasses hash their fields, which rules out ``dict`` and
    ``MappingProxyType``; this keeps ``Mapping`` ergonomics and stays hashable.
    """

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(items)

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


def _freeze(obj: object, name: str, convert: Callable[[Any], Any]) -> None:
    # The dataclasses are frozen; normalising inputs in __post_init__ needs the bypass.
    object.__setattr__(obj, name, convert(getattr(obj, name)))


@dataclass(frozen=True)
class Http3Config:
    enabled: bool = False
    port: int | None = None  # UDP; None: the same number as server.port
    certificate: Certificate | None = None  # tls_cert_file / tls_key_file, else server.tls's


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080  # HTTP/1.1 + HTTP/2 listener (HTTPS with tls)
    # Envoy's admin on a loopback TCP port, an explicit opt-in: any local user can reach that port
    # (POST /quitquitquit stops the gateway). None: the admin is on a Unix socket only Hapax's
    # user can open, and Envoy's stats are served read-only on metrics_port.
    admin_port: int | None = None
    metrics_port: int = 9464  # Hapax /metrics; not 9090, Prometheus's own (docs/configuration.md)
    tls: Certificate | None = None  # HTTPS on the TCP listener, HTTP/2 by ALPN
    http3: Http3Config = Http3Config()
    # Seconds a client has to send its whole request (headers and body): a body sent slowly
    # holds a connection and its buffer; Envoy answers 408 and closes it (docs/operations.md).
    request_timeout: int = 60

    @property
    def http3_port(self) -> int:
        return self.port if self.http3.port is None else self.http3.port


@dataclass(frozen=True)
class HealthCheckConfig:
    """How ext_proc probes a provider, and when the verdict flips (Envoy's semantics)."""

    interval: float = 10.0  # seconds between probes
    timeout: float = 5.0  # one probe's time limit
    healthy_threshold: int = 2  # consecutive successes to come back
    unhealthy_threshold: int = 3  # consecutive failures to be taken out


@dataclass(frozen=True)
class CircuitBreakerConfig:
    """Caps on what one provider may hold, so a slow one cannot absorb all capacity."""

    max_concurrent_requests: int = 1024
    max_pending_requests: int = 1024
    # Retries in flight at once; a chain allows the sum of its providers'. Not
    # Envoy's default of 3: failing over is this gateway's job, and a retry goes
    # to another provider, so it is no storm against the one that failed.
    max_retries: int = 1024


@dataclass(frozen=True)
class RetryConfig:
    # Attempts per request, the first included; None: one per provider of the
    # request's chain (each retry goes to the next provider).
    max_attempts: int | None = None
    # Envoy's jittered exponential back-off between attempts: each wait is
    # random in [0, base x 2^n), capped at max_interval.
    backoff_base: float = 0.025
    backoff_max: float = 0.25


@dataclass(frozen=True)
class ExtProcConfig:
    # ext_proc processes `hapax serve` runs; None: one per CPU. (Envoy spreads the
    # gRPC streams over them; a request's steps may land on different ones.)
    workers: int | None = None
    # gRPC streams Envoy may hold open to each worker at once (each request holds one or
    # two for its whole life). Envoy's ext_proc cluster allows this times the workers;
    # beyond it a request is shed with a 503 and retry-after (docs/operations.md: Overload).
    max_streams_per_worker: int = 1024


@dataclass(frozen=True)
class FleetTls:
    """Mutual TLS on the control plane's xDS port: its own certificate, and the CA whose
    certificates a fleet's Envoys and ext_procs must present (no other client connects)."""

    certificate: Certificate
    client_ca_file: str
    client_ca_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class ControlPlaneConfig:
    """Where a fleet's Envoys and ext_procs reach the control plane when it runs on its own
    (``python -m control_plane`` without --listen); `hapax serve` uses a Unix socket instead."""

    listen: str = "127.0.0.1:18000"  # host:port
    tls: FleetTls | None = None


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"    # Hapax's own processes (Envoy's has --envoy-log-level)
    format: str = "json"   # json | text, for Hapax's own lines; access logs are always JSON
    access_log: bool = True  # Envoy's access log, one JSON line per request on stderr


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    type: str  # one of PROVIDER_TYPES
    model: str  # the default model: what ``auto``, an alias or another provider's model gets
    api_key: str = field(repr=False)  # after ${ENV} expansion; "" when unset
    base_url: str  # no trailing slash
    timeout: float = DEFAULT_TIMEOUT  # seconds
    aliases: tuple[str, ...] = ()  # extra model names clients may use for ``model``
    health_check: HealthCheckConfig = HealthCheckConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    # Client request headers this provider is sent besides what every provider gets
    # (hapax/wire.py: PROVIDER_REQUEST_HEADERS); lowercase. Every other one is removed.
    forward_headers: tuple[str, ...] = ()
    # The environment variables api_key was written with (``${ANTHROPIC_API_KEY}``): names, never
    # values, so that a refused key's message can say where to fix it.
    api_key_variables: tuple[str, ...] = ()
    # Every model it serves -> the families each serves (FAMILIES), ``model`` first. Empty:
    # ``model`` alone, serving every family its type does (TYPE_FAMILIES).
    models: Mapping[str, tuple[str, ...]] = field(default_factory=FrozenMap)
    # The region this deployment serves from (``regions:``); None: no region, tried after the regional ones.
    region: str | None = None

    def __post_init__(self) -> None:
        _freeze(self, "aliases", tuple)
        _freeze(self, "forward_headers", tuple)
        _freeze(self, "api_key_variables", tuple)
        models = self.models or {self.model: TYPE_FAMILIES.get(self.type, FAMILIES)}
        _freeze(self, "models", lambda _: FrozenMap((name, tuple(f)) for name, f in models.items()))

    @property
    def api_key_source(self) -> str:
        """Where its key comes from, for messages: providers.NAME.api_key, from ${VAR}."""
        variables = ", ".join(f"${{{name}}}" for name in self.api_key_variables)
        return f"providers.{self.name}.api_key" + (f", from {variables}" if variables else "")

    def serves(self, family: str) -> bool:
        return self.default_model(family) is not None

    def default_model(self, family: str) -> str | None:
        """What a request of ``family`` naming none of this provider's models is sent: its first such model."""
        return next((name for name, families in self.models.items() if family in families), None)


DEDUP_CHOICES = ("off", "on", "always")


@dataclass(frozen=True)
class RouteConfig:
    path: str
    handler: str  # one of HANDLERS
    version: str = "v1"
    metrics_labels: Mapping[str, str] = field(default_factory=FrozenMap)
    # Identical requests in flight at once go to the provider once (ext_proc/coalescing.py):
    # "on" those whose answer is determined (temperature 0, or a seed), "always" any.
    dedup: str = "off"

    def __post_init__(self) -> None:
        _freeze(self, "metrics_labels", FrozenMap)


LIMIT_PERIODS = ("day", "month")  # a budget's
STORE_ERROR_CHOICES = ("open", "closed")


@dataclass(frozen=True)
class Budget:
    """A spend limit in US dollars per calendar day or month (UTC), priced by the ``pricing`` table."""

    usd: float
    period: str  # one of LIMIT_PERIODS


@dataclass(frozen=True)
class LimitsConfig:
    """A client's or a department's limits; None: no limit of that kind."""

    requests_per_minute: int | None = None
    requests_per_day: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    budget: Budget | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in (self.requests_per_minute, self.requests_per_day,
                                                   self.tokens_per_minute, self.tokens_per_day, self.budget))


@dataclass(frozen=True)
class ClientConfig:
    """Who may call: a team or an application, with its keys (as hashed lines, hapax/client_keys.py)."""

    name: str
    keys: tuple[KeyLine, ...]
    # Whose department limits it shares; None: its metrics_labels' ``department``, if any.
    department: str | None = None
    # Its requests' series carry these, over the route's.
    metrics_labels: Mapping[str, str] = field(default_factory=FrozenMap)
    limits: LimitsConfig = LimitsConfig()
    # What it may call; empty: every model, every route.
    models: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    # Waiting in the queue, a higher priority goes first.
    priority: int = 0

    def __post_init__(self) -> None:
        _freeze(self, "keys", tuple)
        _freeze(self, "metrics_labels", FrozenMap)
        _freeze(self, "models", tuple)
        _freeze(self, "routes", tuple)

    @property
    def department_name(self) -> str | None:
        return self.department or self.metrics_labels.get("department")


@dataclass(frozen=True)
class AdmissionConfig:
    """``limits:``: where the counters live and what the gateway does when they cannot be read."""

    # "" : the embedded store (a SQLite file the gateway's workers share); redis://...: a fleet's.
    # A Redis URL may hold its password: never printed, never in Envoy's configuration.
    store: str = field(default="", repr=False)
    on_store_error: str = "open"  # one of STORE_ERROR_CHOICES
    # Tokens reserved for an answer whose request sets no max_tokens.
    default_max_tokens: int = 4096
    departments: Mapping[str, LimitsConfig] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        _freeze(self, "departments", FrozenMap)


@dataclass(frozen=True)
class QueueConfig:
    """``queue:``: a request whose provider is at its concurrency limit waits for a slot instead of a 503."""

    max_waiting: int = 1000  # requests waiting at once, every provider and department together
    timeout: float = 30.0  # seconds a request may wait; then 503 with retry-after


@dataclass(frozen=True)
class LedgerConfig:
    """``ledger:``: one record per request, in SQLite files (one a month) in ``directory``, or in
    PostgreSQL (``store``) for a fleet."""

    directory: str  # absolute (relative to the config file's directory in the file); "" with a store
    retention_days: int = 400
    store: str = field(default="", repr=False)  # postgresql://...: may hold a password


DEFAULT_REGION_HEADER = wire.DEFAULT_REGION_HEADER


@dataclass(frozen=True)
class GeoIpConfig:
    """``regions.geoip``: a MaxMind country database, read by Envoy's geoip filter, and each country's region."""

    database: str  # absolute (relative to the config file's directory in the file)
    countries: Mapping[str, str] = field(default_factory=FrozenMap)  # ISO 3166 code (upper case) -> region

    def __post_init__(self) -> None:
        _freeze(self, "countries", FrozenMap)


@dataclass(frozen=True)
class RegionsConfig:
    """``regions:``: where a request comes from, the order its traffic fails over in, and the
    departments whose requests never leave a region (data residency)."""

    home: str  # the gateway's own region: requests with no (trusted) region
    header: str = DEFAULT_REGION_HEADER  # lowercase
    trusted_sources: tuple[str, ...] = ()  # CIDR ranges whose requests' header is honoured
    # Every region -> the other regions in the order its traffic fails over to them (complete: every
    # other region, the configured ones first, then the rest in file order).
    failover: Mapping[str, tuple[str, ...]] = field(default_factory=FrozenMap)
    geoip: GeoIpConfig | None = None
    residency: Mapping[str, str] = field(default_factory=FrozenMap)  # department -> pinned region

    def __post_init__(self) -> None:
        _freeze(self, "trusted_sources", tuple)
        _freeze(self, "failover", lambda m: FrozenMap((k, tuple(v)) for k, v in m.items()))
        _freeze(self, "residency", FrozenMap)

    @property
    def names(self) -> tuple[str, ...]:
        """Every region, in the order the providers name them."""
        return tuple(self.failover)

    def order(self, region: str) -> tuple[str, ...]:
        """The regions a request from ``region`` tries, its own first."""
        return (region, *self.failover.get(region, ()))


@dataclass(frozen=True)
class VariantConfig:
    """One arm of an experiment: a provider (with its chain, for failover) and the model it is sent."""

    name: str
    provider: str
    model: str  # one the provider serves for chat; its default chat model when the file names none
    weight: int  # relative to the experiment's other variants


STICKY_CLIENT_KEY = "client_key"


@dataclass(frozen=True)
class ExperimentConfig:
    """``experiments.NAME``: a model name's (or some routes') chat requests split between variants.

    A user stays on one variant: Envoy hashes ``sticky_header`` (else the client key's id) into
    one of wire.EXPERIMENT_BUCKETS buckets, and each variant holds a run of buckets in order.
    """

    name: str
    variants: tuple[VariantConfig, ...]
    model: str | None = None  # the model name split; None: any model on ``routes``
    routes: tuple[str, ...] = ()  # the route paths it applies on; empty: every chat route
    sticky_header: str | None = None  # None: the client key's id alone (sticky_by: client_key)

    def __post_init__(self) -> None:
        _freeze(self, "variants", tuple)
        _freeze(self, "routes", tuple)

    def buckets(self) -> tuple[int, ...]:
        """Each variant's share of the buckets, in order (largest remainder): weights that keep their
        ratio keep every user where they were, and a changed weight moves only the users between
        the old boundary and the new."""
        total = sum(v.weight for v in self.variants)
        exact = [v.weight * wire.EXPERIMENT_BUCKETS / total for v in self.variants]
        shares = [int(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - shares[i], reverse=True)
        for i in by_remainder[:wire.EXPERIMENT_BUCKETS - sum(shares)]:
            shares[i] += 1
        return tuple(shares)

    def applies_on(self, route: RouteConfig) -> bool:
        return route.handler in EXPERIMENT_HANDLERS and (not self.routes or route.path in self.routes)


# Experiments compare chat answers: what a chat, legacy completion, Messages or Responses request is sent.
EXPERIMENT_HANDLERS = (wire.Handler.CHAT, wire.Handler.COMPLETION, wire.Handler.MESSAGES, wire.Handler.RESPONSES)


@dataclass(frozen=True)
class HapaxConfig:
    server: ServerConfig
    providers: Mapping[str, ProviderConfig]  # in file order
    provider_preference: tuple[str, ...]
    # Every route served: the standard ones (DEFAULT_ROUTES, unless ``default_routes: false``)
    # with the configured ones over them; unique paths.
    routes: tuple[RouteConfig, ...]
    warnings: tuple[ConfigIssue, ...] = ()  # non-fatal findings
    source: str = "<string>"
    retry: RetryConfig = RetryConfig()
    # Model -> price per million tokens: the built-in table with ``pricing:`` over it.
    pricing: Mapping[str, ModelPrice] = field(default_factory=lambda: FrozenMap(DEFAULT_PRICES))
    logging: LoggingConfig = LoggingConfig()
    ext_proc: ExtProcConfig = ExtProcConfig()
    control_plane: ControlPlaneConfig = ControlPlaneConfig()
    # None: no ``clients:`` section, the gateway is open to whoever reaches it (the demo).
    clients: Mapping[str, ClientConfig] | None = None
    limits: AdmissionConfig = AdmissionConfig()
    queue: QueueConfig | None = None  # None: no queue, a saturated provider's requests get 503
    ledger: LedgerConfig | None = None  # None: no cost ledger
    experiments: Mapping[str, ExperimentConfig] = field(default_factory=FrozenMap)
    regions: RegionsConfig | None = None  # None: no geographic routing, one chain per first provider

    def __post_init__(self) -> None:
        _freeze(self, "experiments", FrozenMap)
        if self.clients is not None:
            _freeze(self, "clients", FrozenMap)
        _freeze(self, "pricing", FrozenMap)
        _freeze(self, "providers", FrozenMap)
        _freeze(self, "provider_preference", tuple)
        _freeze(self, "routes", tuple)
        _freeze(self, "warnings", tuple)

    @property
    def uses_first_worker(self) -> bool:
        """Whether some check lives in the first ext_proc worker alone (the queue, coalescing)."""
        return self.queue is not None or any(route.dedup != "off" for route in self.routes)

    @property
    def reads_request_bodies(self) -> bool:
        """Whether Envoy reads every provider request's body fields, lanes aside: the admission
        check reserves by them, the queue finds the provider by the model, and a client confined
        to some models is checked against them."""
        return (self.limited or self.queue is not None or self.ledger is not None
                or any(client.models for client in (self.clients or {}).values()))

    @property
    def limited(self) -> bool:
        """Whether any request may be refused for a limit or a budget (the admission check runs)."""
        clients = self.clients.values() if self.clients else ()
        return any(client.limits for client in clients) or any(self.limits.departments.values())


# The standard OpenAI endpoints: served without ``routes``, and beside them unless ``default_routes: false``.
DEFAULT_ROUTES: tuple[RouteConfig, ...] = (
    RouteConfig("/v1/chat/completions", "chat"),
    RouteConfig("/v1/completions", "completion"),
    RouteConfig("/v1/embeddings", "embeddings"),
    RouteConfig("/v1/models", "models"),
    RouteConfig(wire.ANTHROPIC_MESSAGES_PATH, "messages"),  # Anthropic's Messages API, for clients written for it
    RouteConfig(wire.ANTHROPIC_COUNT_TOKENS_PATH, "count_tokens"),  # and its token count
    RouteConfig("/v1" + wire.OPENAI_RESPONSES_PATH, "responses"),  # OpenAI's Responses API
)
