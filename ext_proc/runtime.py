"""ext_proc's read-only view of one ``hapax.v1.Runtime`` version.

Built once per version received over xDS and swapped atomically, so a request
sees one consistent version from its first phase to its last.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from hapax.v1 import runtime_pb2
from hapax.wire import PROVIDER_REQUEST_HEADERS


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
    model: str
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

    def __repr__(self) -> str:  # never print the key
        return f"Provider(name={self.name!r}, type={self.type!r}, model={self.model!r})"


@dataclass(frozen=True)
class Route:
    path: str
    handler: str
    version: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Chain:
    """An Envoy aggregate cluster a request may be sent to, and its attempts (the first included)."""

    cluster: str
    attempts: int
    # Its providers in the order tried: whose reasons a 503 of this chain gives. Not part of
    # what makes two chains equal (the cluster does that).
    providers: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class RuntimeView:
    version: str
    providers: Mapping[str, Provider]
    routes: Mapping[str, Route]
    chain_for_model: Mapping[str, Chain]  # every model name clients may send
    default_chain: Chain  # ``auto`` and requests without a model
    models_json: bytes  # the /v1/models answer, built once per version

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
        routes = {r.path: Route(r.path, r.handler, r.version, MappingProxyType(dict(r.metrics_labels)))
                  for r in rt.routes}
        return cls(
            version=rt.config_version,
            providers=MappingProxyType(providers),
            routes=MappingProxyType(routes),
            chain_for_model=MappingProxyType({m.name: chains[m.chain] for m in rt.models}),
            default_chain=chains[rt.chains[0].cluster],
            models_json=_models_json(providers.values()),
        )


def _models_json(providers) -> bytes:
    data = [{"id": model, "object": "model", "created": 0, "owned_by": p.name}
            for p in providers for model in (p.model, *p.aliases)]
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
    )
