"""ext_proc's read-only view of one ``hapax.v1.Runtime`` version.

Built once per version received over xDS and swapped atomically, so a request
sees one consistent version from its first phase to its last.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from ext_proc.experiments import Experiment, Variant
from hapax import wire
from hapax.v1 import runtime_pb2
from hapax.wire import GEO_COUNTRY_HEADER, KEY_ID_HEADER, PROVIDER_REQUEST_HEADERS, ModelFamily


class InvalidRuntime(Exception):
    """A Runtime resource ext_proc cannot serve (sent back as a NACK)."""


@dataclass(frozen=True)
class HealthCheckSettings:
    """A provider's health check, as the runtime carries it (ext_proc/provider_health.py runs it)."""

    interval: float = 10.0         # seconds from the start of one probe to the start of the next
    timeout: float = 5.0           # one probe's time limit (connect + status + body)
    healthy_threshold: int = 2     # consecutive successes to become healthy
    unhealthy_threshold: int = 3   # consecutive failures to become unhealthy

    def effective(self) -> HealthCheckSettings:
        """These settings with unusable values (zero from an unset proto field,
        negatives) replaced by the defaults: an interval of 0 would spin."""
        default = HealthCheckSettings()
        return HealthCheckSettings(
            interval=self.interval if self.interval > 0 else default.interval,
            timeout=self.timeout if self.timeout > 0 else default.timeout,
            healthy_threshold=self.healthy_threshold if self.healthy_threshold >= 1 else default.healthy_threshold,
            unhealthy_threshold=(self.unhealthy_threshold if self.unhealthy_threshold >= 1
                                 else default.unhealthy_threshold),
        )


@dataclass(frozen=True)
class Provider:
    name: str
    type: str
    model: str  # the default model; an attempt's own is ``serving``'s
    aliases: tuple[str, ...]
    base_url: str
    host: str          # value for :authority
    base_path: str     # path prefix from base_url, no trailing slash
    api_key: str
    timeout: float
    health_check: HealthCheckSettings = HealthCheckSettings()
    # US dollars per million input / output tokens; None when the model has no price.
    price: tuple[float, float] | None = None
    # What an attempt to this provider keeps of the request's headers: what every provider
    # gets and the provider's forward_headers (hapax/wire.py). The rest is removed.
    kept_headers: frozenset[str] = frozenset(PROVIDER_REQUEST_HEADERS)
    # Where api_key comes from ("providers.NAME.api_key, from ${VAR}"), for a refused key's message.
    api_key_source: str = ""
    # Every model it serves -> its families, the default model first. Empty: the default alone, for all.
    models: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    # By model, those with a price.
    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    max_concurrent_requests: int = 1024  # the queue's slots for it (its circuit breaker's limit)
    region: str = ""  # the region it serves from (regions:); "": none

    def __repr__(self) -> str:  # never print the key
        return f"Provider(name={self.name!r}, type={self.type!r}, model={self.model!r})"

    def serving(self, family: str, requested: str | None) -> Provider:
        """This provider as an attempt of ``family`` asking for ``requested`` sees it: with the model
        it is sent. A model it serves for the family is sent as named; anything else (``auto``, an
        alias, another provider's model on failover) gets its first model of the family."""
        if not self.models:
            return self
        model = requested if requested and family in self.models.get(requested, ()) else self._first(family)
        if model == self.model:
            return self
        return replace(self, model=model, price=self.prices.get(model))

    def _first(self, family: str) -> str:
        # A chain holds only providers serving its family; the default is a last resort.
        return next((name for name, families in self.models.items() if family in families), self.model)


def cost_usd(price: tuple[float, float] | None, inputs: int | None, outputs: int | None) -> float:
    """What the answer cost, from the price table: 0 when its price or a count is unknown (as the metrics do)."""
    if price is None or (inputs is None and outputs is None):
        return 0.0
    return ((inputs or 0) * price[0] + (outputs or 0) * price[1]) / 1e6


@dataclass(frozen=True)
class Route:
    path: str
    handler: str
    version: str
    labels: Mapping[str, str]
    dedup: str = "off"  # off | on | always (ext_proc/coalescing.py)


@dataclass(frozen=True)
class Chain:
    """An Envoy aggregate cluster a request may be sent to, and its attempts (the first included)."""

    cluster: str
    attempts: int
    # Its providers in the order tried: whose reasons a 503 of this chain gives. Not part of
    # what makes two chains equal (the cluster does that).
    providers: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class LimitSettings:
    """A client's or a department's limits (0: none of that kind); budget in US dollars per period."""

    requests_per_minute: int = 0
    requests_per_day: int = 0
    tokens_per_minute: int = 0
    tokens_per_day: int = 0
    budget_usd: float = 0.0
    budget_period: str = ""

    @classmethod
    def from_proto(cls, limits: runtime_pb2.Limits) -> LimitSettings:
        return cls(limits.requests_per_minute, limits.requests_per_day, limits.tokens_per_minute,
                   limits.tokens_per_day, limits.budget_usd, limits.budget_period)


@dataclass(frozen=True)
class Client:
    """Who a request's key belongs to (clients.NAME)."""

    name: str
    department: str  # "" : none
    labels: Mapping[str, str]
    limits: LimitSettings
    priority: int = 0


@dataclass(frozen=True)
class AdmissionSettings:
    store: str = field(default="", repr=False)  # may hold a Redis password
    fail_closed: bool = False
    default_max_tokens: int = 4096
    departments: Mapping[str, LimitSettings] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class LedgerSettings:
    directory: Path | None  # on this host (SQLite); None with a store
    retention_days: int = 400
    store: str = field(default="", repr=False)  # postgresql://...: may hold a password


@dataclass(frozen=True)
class QueueSettings:
    max_waiting: int
    timeout: float  # seconds


@dataclass(frozen=True)
class RegionRouting:
    """Where a request comes from picks its chain (``regions:``), as Envoy's lane lookups pick it
    (control_plane/resources/regional.py): a pinned department's region, else the region header,
    else the country's region, else the home region."""

    header: str
    home: str
    countries: Mapping[str, str]
    residency: Mapping[str, str]  # department -> pinned region
    # View key (a region, or "<region>.only") -> family -> model name -> chain; and family -> auto chain.
    family_models: Mapping[str, Mapping[str, Mapping[str, Chain]]]
    auto_chains: Mapping[str, Mapping[str, Chain]]

    def view_key(self, headers: Mapping[str, str], department: str | None) -> str | None:
        """The request's view; None: the home region's (the runtime's own chains)."""
        pinned = self.residency.get(department) if department else None
        if pinned is not None:
            return f"{pinned}.only"
        region = headers.get(self.header)
        if not self._is_region(region):  # none, or none known: the client's country's, else home
            region = self.countries.get(headers.get(GEO_COUNTRY_HEADER, ""))
        return region if self._is_region(region) and region != self.home else None

    def _is_region(self, name: str | None) -> bool:
        """A region's own view (not a pinned one, "<region>.only": no header may name that)."""
        return name is not None and "." not in name and name in self.family_models

    @staticmethod
    def pinned_region(view_key: str | None) -> str | None:
        """The region of a pinned view ("<region>.only"); None for any other."""
        return view_key.removesuffix(".only") if view_key and view_key.endswith(".only") else None

    def pinned_department(self, *departments: str | None) -> str | None:
        """The first of ``departments`` (the client's, then the route's) pinned to a region."""
        return next((d for d in departments if d and d in self.residency), None)

    def chain_for(self, key: str, family: str, model: str | None) -> Chain | None:
        if model is None:
            return self.auto_chains.get(key, {}).get(family)
        return self.family_models.get(key, {}).get(family, {}).get(model)


@dataclass(frozen=True)
class RuntimeView:
    version: str
    providers: Mapping[str, Provider]
    routes: Mapping[str, Route]
    chain_for_model: Mapping[str, Chain]  # every chat model name clients may send
    default_chain: Chain  # chat's ``auto`` and requests without a model
    models_json: bytes  # the /v1/models answer, built once per version
    # Family -> model name -> its chain: chain_for_model is chat's.
    family_models: Mapping[str, Mapping[str, Chain]] = field(default_factory=lambda: MappingProxyType({}))
    auto_chains: Mapping[str, Chain] = field(default_factory=lambda: MappingProxyType({}))  # family -> ``auto``
    # Key id -> its client; empty when the gateway is open.
    clients: Mapping[str, Client] = field(default_factory=lambda: MappingProxyType({}))
    admission: AdmissionSettings | None = None  # None: no limits
    queue: QueueSettings | None = None  # None: no queue
    ledger: LedgerSettings | None = None  # None: no cost ledger
    experiments: tuple[Experiment, ...] = ()
    chains: Mapping[str, Chain] = field(default_factory=lambda: MappingProxyType({}))  # by cluster
    regions: RegionRouting | None = None  # None: no geographic routing
    # (route path, client name, experiment, variant) -> the route as such requests are labelled (labelled()).
    _labelled: dict[tuple[str, str, str, str], Route] = field(default_factory=dict, compare=False, repr=False)

    def client(self, key_id: str | None) -> Client | None:
        return self.clients.get(key_id) if key_id else None

    def labelled(self, route: Route, key_id: str | None, variant: Variant | None = None) -> Route:
        """``route`` with its client's metrics labels over its own (a client's requests are its
        department's wherever they go) and, on a gateway with experiments, the request's experiment
        and variant ("" for none). Built once per route, client and variant."""
        client = self.client(key_id)
        if (client is None or not client.labels) and not self.experiments:
            return route
        key = (route.path, client.name if client else "", variant.experiment if variant else "",
               variant.name if variant else "")
        cached = self._labelled.get(key)
        if cached is None:
            labels = {**route.labels, **(client.labels if client else {}),
                      **(variant.labels if variant else dict.fromkeys(wire.EXPERIMENT_LABELS, ""))}
            cached = self._labelled[key] = replace(route, labels=MappingProxyType(labels))
        return cached

    def experiment_for(self, route: str, model: str | None) -> Experiment | None:
        """The experiment a request on ``route`` naming ``model`` belongs to, if any."""
        return next((e for e in self.experiments if e.applies(route, model)), None)

    def variant(self, experiment: str | None, name: str | None) -> Variant | None:
        """The variant these header values name; None unless this version has it (a client may send anything)."""
        if not experiment or not name:
            return None
        return next((v for e in self.experiments if e.name == experiment for v in e.variants if v.name == name), None)
    def region_view(self, headers: Mapping[str, str], route_department: str | None) -> str | None:
        """With regions, which view's chains a request takes, as Envoy's lane lookups pick them
        (control_plane/resources/regional.py): a pinned department's (its client's first, then its
        route's), else the region its (trusted) header or its country names; None: home's, the
        runtime's own chains."""
        if self.regions is None:
            return None
        client = self.client(headers.get(KEY_ID_HEADER))
        department = self.regions.pinned_department(client.department if client is not None else None,
                                                    route_department)
        return self.regions.view_key(headers, department)

    def chain_in(self, region_view: str | None, family: str, model: str | None) -> Chain | None:
        """``chain_for`` in a region's view (``region_view``; None: home's)."""
        if region_view is None or self.regions is None:
            return self.chain_for(family, model)
        return self.regions.chain_for(region_view, family, model)

    def chain_for(self, family: str, model: str | None) -> Chain | None:
        """Where a request of ``family`` naming ``model`` (None: ``auto``) goes; None: nowhere."""
        if model is None:
            return self.auto_chains.get(family, self.default_chain if not self.auto_chains else None)
        return self.family_models.get(family, {}).get(model)

    @classmethod
    def from_proto(cls, rt: runtime_pb2.Runtime, known_types: frozenset[str]) -> RuntimeView:
        """Reads the control plane's plan as it is (control_plane/plan.py); derives none of it."""
        providers = {p.name: _provider(p, known_types) for p in rt.providers}
        if not rt.chains:
            raise InvalidRuntime("runtime has no provider chain")
        chains = {ch.cluster: Chain(ch.cluster, ch.attempts, tuple(ch.providers)) for ch in rt.chains}
        for model in rt.models:
            if model.chain not in chains:
                raise InvalidRuntime(f"model {model.name}: no chain {model.chain}")
        for family, cluster in rt.auto_chains.items():
            if cluster not in chains:
                raise InvalidRuntime(f"auto chain of {family}: no chain {cluster}")
        routes = {r.path: Route(r.path, r.handler, r.version, MappingProxyType(dict(r.metrics_labels)),
                                r.dedup or "off") for r in rt.routes}
        family_models: dict[str, dict[str, Chain]] = {}
        for m in rt.models:  # one without a family (a runtime from before families) serves all
            for family in [m.family] if m.family else list(ModelFamily):
                family_models.setdefault(family, {})[m.name] = chains[m.chain]
        return cls(
            version=rt.config_version,
            providers=MappingProxyType(providers),
            routes=MappingProxyType(routes),
            chain_for_model=MappingProxyType(family_models.get(ModelFamily.CHAT, {})),
            default_chain=chains[rt.chains[0].cluster],
            models_json=_models_json(rt.models, rt.experiments),
            family_models=MappingProxyType({f: MappingProxyType(m) for f, m in family_models.items()}),
            auto_chains=MappingProxyType({f: chains[c] for f, c in rt.auto_chains.items()}),
            clients=MappingProxyType(_clients(rt)),
            admission=_admission(rt) if rt.HasField("admission") else None,
            queue=QueueSettings(rt.queue.max_waiting, rt.queue.timeout_seconds) if rt.HasField("queue") else None,
            ledger=LedgerSettings(Path(rt.ledger.directory) if rt.ledger.directory else None,
                                  rt.ledger.retention_days or LedgerSettings.retention_days, rt.ledger.store)
            if rt.HasField("ledger") else None,
            experiments=tuple(_experiment(e, chains) for e in rt.experiments),
            chains=MappingProxyType(chains),
            regions=_regions(rt, chains) if rt.HasField("regions") else None,
        )


def _experiment(e: runtime_pb2.Experiment, chains: Mapping[str, Chain]) -> Experiment:
    for v in e.variants:
        if v.chain not in chains:
            raise InvalidRuntime(f"experiment {e.name}, variant {v.name}: no chain {v.chain}")
    if not sum(v.buckets for v in e.variants):
        raise InvalidRuntime(f"experiment {e.name}: no variant takes requests")
    return Experiment(e.name, e.model, frozenset(e.routes), e.sticky_header.lower(), tuple(
        Variant(e.name, v.name, v.provider, v.model, v.chain, v.buckets) for v in e.variants))


def _regions(rt: runtime_pb2.Runtime, chains: Mapping[str, Chain]) -> RegionRouting:
    r = rt.regions
    family_models: dict[str, dict[str, dict[str, Chain]]] = {}
    auto: dict[str, dict[str, Chain]] = {}
    for view in r.views:
        models = family_models.setdefault(view.key, {})
        for m in view.models:
            if m.chain not in chains:
                raise InvalidRuntime(f"region view {view.key}, model {m.name}: no chain {m.chain}")
            models.setdefault(m.family, {})[m.name] = chains[m.chain]
        for family, cluster in view.auto_chains.items():
            if cluster not in chains:
                raise InvalidRuntime(f"region view {view.key}, auto chain of {family}: no chain {cluster}")
            auto.setdefault(view.key, {})[family] = chains[cluster]
    return RegionRouting(r.header, r.home, MappingProxyType(dict(r.countries)), MappingProxyType(dict(r.residency)),
                         MappingProxyType(family_models), MappingProxyType(auto))


def _clients(rt: runtime_pb2.Runtime) -> dict[str, Client]:
    by_key: dict[str, Client] = {}
    for c in rt.clients:
        client = Client(c.name, c.department, MappingProxyType(dict(c.metrics_labels)),
                        LimitSettings.from_proto(c.limits), c.priority)
        by_key.update((key_id, client) for key_id in c.key_ids)
    return by_key


def _admission(rt: runtime_pb2.Runtime) -> AdmissionSettings:
    a = rt.admission
    return AdmissionSettings(a.store, a.fail_closed, a.default_max_tokens or AdmissionSettings.default_max_tokens,
                             MappingProxyType({name: LimitSettings.from_proto(limits)
                                               for name, limits in a.departments.items()}))


def _models_json(models, experiments) -> bytes:
    """Every model name clients may send, once, by the provider that serves it first; an experiment's
    own name is the gateway's."""
    owners: dict[str, str] = {}
    for model in models:
        owners.setdefault(model.name, model.provider)
    for experiment in experiments:
        if experiment.model:
            owners.setdefault(experiment.model, "hapax")
    data = [{"id": name, "object": "model", "created": 0, "owned_by": owner} for name, owner in owners.items()]
    return json.dumps({"object": "list", "data": data}).encode()


def _provider(p: runtime_pb2.Provider, known_types: frozenset[str]) -> Provider:
    if p.type not in known_types:
        raise InvalidRuntime(f"provider {p.name}: no translator for type {p.type!r}")
    url = urlsplit(p.base_url)
    if not url.hostname:
        raise InvalidRuntime(f"provider {p.name}: base_url has no host")
    default_port = 443 if url.scheme == "https" else 80
    name = f"[{url.hostname}]" if ":" in url.hostname else url.hostname  # IPv6 literals keep brackets
    host = name if (url.port or default_port) == default_port else f"{name}:{url.port}"
    hc = p.health_check
    return Provider(
        name=p.name, type=p.type, model=p.model, aliases=tuple(p.aliases),
        base_url=p.base_url, host=host, base_path=url.path.rstrip("/"),
        api_key=p.api_key, timeout=p.timeout_seconds,
        health_check=HealthCheckSettings(
            interval=hc.interval_seconds, timeout=hc.timeout_seconds,
            healthy_threshold=hc.healthy_threshold, unhealthy_threshold=hc.unhealthy_threshold,
        ) if p.HasField("health_check") else HealthCheckSettings(),
        price=(p.price.input_per_million, p.price.output_per_million) if p.HasField("price") else None,
        kept_headers=frozenset((*PROVIDER_REQUEST_HEADERS, *(h.lower() for h in p.forward_headers))),
        api_key_source=p.api_key_source,
        models=MappingProxyType({m.name: frozenset(m.families) for m in p.models}),
        prices=MappingProxyType({m.name: (m.price.input_per_million, m.price.output_per_million)
                                 for m in p.models if m.HasField("price")}),
        max_concurrent_requests=p.max_concurrent_requests or Provider.max_concurrent_requests,
        region=p.region,
    )
