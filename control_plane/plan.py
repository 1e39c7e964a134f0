"""The plan of one config: who serves each model, each chain's attempts, the lane models.

Computed once per config (control_plane/server.py builds a draft snapshot to
learn whether the content changed, then the versioned one, from the same plan),
before any resource is built: every builder
of Envoy resources and ext_proc's runtime reads the same plan instead of
deriving it again from the config, and ext_proc receives what it needs of it
in ``hapax.v1.Runtime`` (chains, model owners) rather than deriving it again
on the data plane.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlsplit

from control_plane.config.model import HapaxConfig, ProviderConfig
from hapax import wire

# The APIs whose body names a model: Envoy may route them from the body (the lanes).
MODEL_LANE_HANDLERS = frozenset({wire.Handler.CHAT, wire.Handler.COMPLETION, wire.Handler.EMBEDDINGS})


@dataclass(frozen=True)
class Chain:
    """The providers a request tries, in order, and how many attempts it may make."""

    first: str
    providers: tuple[str, ...]
    attempts: int  # per request, the first included (one per provider, at least two, or the config's)
    timeout: float  # the longest of its providers' timeouts

    @property
    def cluster(self) -> str:
        return chain_cluster_name(self.first)

    def longest_wait(self, backoff_max: float) -> float:
        """The longest a client of this chain may wait for a first byte: every attempt silent
        for its whole timeout, and the longest back-off between two attempts.

        Any attempt may go to the chain's slowest provider (the others down or ejected,
        Envoy's retry priority starts over from the providers left), hence its timeout each.
        """
        return self.attempts * self.timeout + (self.attempts - 1) * backoff_max


@dataclass(frozen=True)
class LaneModel:
    """A model name the passthrough lane serves, and how (control_plane/resources/passthrough.py)."""

    model: str
    first: str  # the provider that owns the name: its chain is the request's chain
    providers: tuple[str, ...]  # the chain's providers an attempt reaches without ext_proc
    base_path: str  # the lane providers' API path prefix, e.g. "/v1"


@dataclass(frozen=True)
class Plan:
    config: HapaxConfig
    chains: Mapping[str, Chain]  # by first provider: preference order first, then the others
    model_owners: Mapping[str, str]  # model name (a model or an alias) -> the provider serving it
    lane_models: tuple[LaneModel, ...]

    @property
    def default_chain(self) -> Chain:
        """``auto`` and requests without a model: the preference order."""
        return next(iter(self.chains.values()))

    @property
    def lane_providers(self) -> frozenset[str]:
        return frozenset(name for lane in self.lane_models for name in lane.providers)

    @property
    def longest_chain(self) -> int:
        return max(len(chain.providers) for chain in self.chains.values())

    @property
    def longest_timeout(self) -> float:
        """The longest provider ``timeout``: the per-attempt silence limit of every route."""
        return max(p.timeout for p in self.config.providers.values())

    @property
    def capped_providers(self) -> tuple[str, ...]:
        """The providers whose ``timeout`` is shorter than the routes' limit: each attempt on
        one is held to it on its way there (control_plane/resources/attempts.py)."""
        longest = self.longest_timeout
        return tuple(name for name, p in self.config.providers.items() if p.timeout < longest)

    def route_idle_limit(self, chains: Iterable[Chain]) -> float:
        """A route's idle limit: its client may wait this long for a first byte on any of ``chains``.

        The attempts' own limits always end a silence first; the second is to spare.
        """
        return max(chain.longest_wait(self.config.retry.backoff_max) for chain in chains) + 1

    @property
    def uses_lanes(self) -> bool:
        """Whether some request may take a lane: Envoy then reads bodies and logs answers to ext_proc."""
        return bool(self.lane_models) or any(r.handler in MODEL_LANE_HANDLERS for r in self.config.routes)


def make_plan(config: HapaxConfig) -> Plan:
    chains = {first: _chain(config, first) for first in _chain_firsts(config)}
    owners = _model_owners(config)
    return Plan(config=config, chains=MappingProxyType(chains),
                model_owners=MappingProxyType(owners), lane_models=_lane_models(config, chains, owners))


def provider_cluster_name(provider: str) -> str:
    return f"provider.{provider}"


def chain_cluster_name(first: str) -> str:
    return f"chain.{first}"


def base_path(provider: ProviderConfig) -> str:
    return urlsplit(provider.base_url).path.rstrip("/")


def _chain_firsts(config: HapaxConfig) -> tuple[str, ...]:
    """Every provider gets a chain: preference order first, then the others."""
    rest = tuple(p for p in config.providers if p not in config.provider_preference)
    return (*config.provider_preference, *rest)


def _chain(config: HapaxConfig, first: str) -> Chain:
    order = (first, *(p for p in config.provider_preference if p != first))
    attempts = config.retry.max_attempts or max(len(order), 2)
    return Chain(first, order, attempts, max(config.providers[p].timeout for p in order))


def _model_owners(config: HapaxConfig) -> dict[str, str]:
    """The first provider in preference order wins a model name both serve."""
    owners: dict[str, str] = {}
    for name in [*config.provider_preference, *config.providers]:
        p = config.providers[name]
        for model in (p.model, *p.aliases):
            owners.setdefault(model, name)
    return owners


def _lane_models(config: HapaxConfig, chains: Mapping[str, Chain],
                 owners: Mapping[str, str]) -> tuple[LaneModel, ...]:
    lanes = []
    for model, owner in owners.items():
        first = config.providers[owner]
        if first.type != "openai" or first.model != model:
            continue  # another API, or an alias the body must be rewritten for
        path = base_path(first)
        providers = tuple(name for name in chains[owner].providers
                          if _serves_unchanged(config.providers[name], model, path))
        lanes.append(LaneModel(model, owner, providers, path))
    return tuple(lanes)


def _serves_unchanged(provider: ProviderConfig, model: str, path: str) -> bool:
    return provider.type == "openai" and provider.model == model and base_path(provider) == path
