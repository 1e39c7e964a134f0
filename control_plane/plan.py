"""The plan of one config: who serves each model, each chain's attempts, the lane models.

Computed once per config (control_plane/server.py builds a draft snapshot to
learn whether the content changed, then the versioned one, from the same plan),
before any resource is built: every builder
of Envoy resources and ext_proc's runtime reads the same plan instead of
deriving it again from the config, and ext_proc receives what it needs of it
in ``hapax.v1.Runtime`` (chains, model owners) rather than deriving it again
on the data plane.

Chains are per model family (wire.ModelFamily: chat, embeddings): a provider
lists the models it serves and what each serves (config ``models``), and a
family's chains hold only the providers serving it, so a request never fails
over to a provider that has no model for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from urllib.parse import urlsplit

from control_plane.config.model import FAMILIES, ExperimentConfig, HapaxConfig, ProviderConfig, VariantConfig
from hapax import wire

# The APIs whose body names a model: Envoy may route them from the body (the lanes).
MODEL_LANE_HANDLERS = frozenset({wire.Handler.CHAT, wire.Handler.COMPLETION, wire.Handler.EMBEDDINGS})
LANE_CLUSTER_PREFIX = "lane."


@dataclass(frozen=True)
class Chain:
    """The providers a request tries, in order, and how many attempts it may make."""

    first: str
    providers: tuple[str, ...]
    attempts: int  # per request, the first included (one per provider, at least two, or the config's)
    timeout: float  # the longest of its providers' timeouts
    cluster: str  # its Envoy aggregate cluster (chain_cluster_name)

    @property
    def says_why_unavailable(self) -> bool:
        """Whether its last member is the reasons no provider can serve (clusters.py: unavailable_cluster).

        Not on a chain with more attempts than providers (one provider, retried once):
        previous_priorities sends a retry to the next priority, which would answer in
        place of the provider.
        """
        return self.attempts <= len(self.providers)

    def longest_wait(self, backoff_max: float) -> float:
        """The longest a client of this chain may wait for a first byte: every attempt silent
        for its whole timeout, and the longest back-off between two attempts.

        Any attempt may go to the chain's slowest provider (the others down or ejected,
        Envoy's retry priority starts over from the providers left), hence its timeout each.
        """
        return self.attempts * self.timeout + (self.attempts - 1) * backoff_max


@dataclass(frozen=True)
class OwnedModel:
    """A model name clients may send for one family, and where such a request goes."""

    name: str  # a provider's model, or an alias of its default model
    family: str  # wire.ModelFamily
    owner: str  # the provider serving the name first (preference order wins a shared name)
    chain: Chain  # the owner's chain for the family


@dataclass(frozen=True)
class LaneModel:
    """A model name the passthrough lane serves, and how (control_plane/resources/passthrough.py)."""

    model: str
    family: str  # the requests it serves (wire.FAMILY_OF_HANDLER)
    first: str  # the provider that owns the name: its chain is the request's chain
    providers: tuple[str, ...]  # the chain's providers an attempt reaches without ext_proc
    base_path: str  # the lane providers' API path prefix, e.g. "/v1"
    chain: Chain  # the model's chain, which the lane cluster copies
    cluster: str  # the lane's cluster: lane models of one chain and the same providers share it
    # The API its body is in and its providers speak: "openai" (chat, embeddings routes) or
    # "anthropic" (Messages routes: an Anthropic provider takes a Messages body as it came).
    api: str = "openai"


@dataclass(frozen=True)
class RegionView:
    """Where the requests of one region go (``regions:``): the same model names as the plan's,
    each to a chain in that region's order; a pinned view's chains hold only the region's providers."""

    key: str  # the region, or "<region>.only" for the departments pinned to it (region_view_key)
    region: str
    pinned: bool
    family_chains: Mapping[str, Mapping[str, Chain]]
    models: tuple[OwnedModel, ...]
    lane_models: tuple[LaneModel, ...]

    @property
    def auto_chains(self) -> Mapping[str, Chain]:
        return {family: next(iter(chains.values())) for family, chains in self.family_chains.items() if chains}

    def chain_for(self, family: str, model: str) -> Chain | None:
        return self._chains.get((family, model))

    @cached_property  # looked up for every model name of every lookup
    def _chains(self) -> dict[tuple[str, str], Chain]:
        return {(owned.family, owned.name): owned.chain for owned in self.models}


def region_view_key(region: str, pinned: bool) -> str:
    # A region name has no ".": "eu.only" cannot be a region's own view.
    return f"{region}.only" if pinned else region


@dataclass(frozen=True)
class Plan:
    config: HapaxConfig
    chains: Mapping[str, Chain]  # by cluster: every distinct chain, the chat family's auto chain first
    # family -> (first provider -> its chain): a family's chains hold only providers serving it.
    # With regions, the home region's (the requests that name none).
    family_chains: Mapping[str, Mapping[str, Chain]]
    models: tuple[OwnedModel, ...]  # every (model name, family) clients may send
    lane_models: tuple[LaneModel, ...]
    # With ``regions:``, by key: each region's view, then each pinned region's (region_view_key).
    views: Mapping[str, RegionView] = field(default_factory=lambda: MappingProxyType({}))

    def variant_chain(self, variant: VariantConfig) -> Chain:
        """An experiment variant's chain: its provider's chat chain, failover included."""
        return self.family_chains[wire.ModelFamily.CHAT][variant.provider]

    def experiments_on(self, route_path: str) -> list[ExperimentConfig]:
        return [e for e in self.config.experiments.values() if any(
            r.path == route_path and e.applies_on(r) for r in self.config.routes)]

    @property
    def auto_chains(self) -> Mapping[str, Chain]:
        """Family -> the chain of ``auto`` and requests without a model: its preference order."""
        return {family: next(iter(chains.values())) for family, chains in self.family_chains.items() if chains}

    @property
    def default_chain(self) -> Chain:
        """The first chain: the chat family's auto chain (or, without one, the embeddings family's)."""
        return next(iter(self.chains.values()))

    @property
    def all_lane_models(self) -> tuple[LaneModel, ...]:
        """The plan's lane models and every region view's: each lane cluster is one of theirs."""
        return (*self.lane_models, *(lane for view in self.views.values() for lane in view.lane_models))

    @property
    def lane_providers(self) -> frozenset[str]:
        return frozenset(name for lane in self.all_lane_models for name in lane.providers)

    @cached_property  # read per route: thousands of them
    def longest_chain(self) -> int:
        return max(len(chain.providers) for chain in self.chains.values())

    @cached_property
    def longest_timeout(self) -> float:
        """The longest provider ``timeout``: the per-attempt silence limit of every route."""
        return max(p.timeout for p in self.config.providers.values())

    @property
    def capped_providers(self) -> tuple[str, ...]:
        """The providers whose ``timeout`` is shorter than the routes' limit: each attempt on
        one is held to it on its way there (control_plane/resources/attempts.py)."""
        longest = self.longest_timeout
        return tuple(name for name, p in self.config.providers.items() if p.timeout < longest)

    @cached_property
    def any_chain_idle_limit(self) -> float:
        """The idle limit of a route that may send a request to any chain (the router step's)."""
        return self.route_idle_limit(self.chains.values())

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
    regions = config.regions
    preference = config.provider_preference if regions is None else _regional_order(config, regions.home)
    family_chains = {family: _family_chains(config, family, preference) for family in FAMILIES}
    chains: dict[str, Chain] = {}
    for by_first in family_chains.values():
        for chain in by_first.values():
            chains.setdefault(chain.cluster, chain)
    models = _owned_models(config, family_chains, preference)
    lane_clusters: dict[tuple[str, tuple[str, ...]], str] = {}
    lanes = _lane_models(config, models, lane_clusters)
    views = {}
    if regions is not None:
        # A chain is its providers in order: a view's chain that some chain already is, is that one.
        same = {chain.providers: chain for chain in chains.values()}
        for region, pinned in [*((r, False) for r in regions.names),
                               *((r, True) for r in dict.fromkeys(regions.residency.values()))]:
            view = _view(config, region, pinned, models, same, lane_clusters)
            views[view.key] = view
            for view_chains in view.family_chains.values():
                for chain in view_chains.values():
                    chains.setdefault(chain.cluster, chain)
    return Plan(config=config, chains=MappingProxyType(chains),
                family_chains=MappingProxyType({f: MappingProxyType(c) for f, c in family_chains.items()}),
                models=models, lane_models=lanes, views=MappingProxyType(views))


def _regional_order(config: HapaxConfig, region: str) -> tuple[str, ...]:
    """``provider_preference`` as a request from ``region`` tries it: the region's providers, then
    each region of its failover order's, then the providers without a region (preference order
    within each)."""
    assert config.regions is not None
    ranks = {r: n for n, r in enumerate(config.regions.order(region))}
    return tuple(sorted(config.provider_preference,
                        key=lambda name: ranks.get(config.providers[name].region or "", len(ranks))))


def _view(config: HapaxConfig, region: str, pinned: bool, served: tuple[OwnedModel, ...],
          same: dict[tuple[str, ...], Chain],
          lane_clusters: dict[tuple[str, tuple[str, ...]], str]) -> RegionView:
    key = region_view_key(region, pinned)
    order = _regional_order(config, region)
    if pinned:  # never another region's provider, nor one without a region; every one of its own
        order = tuple(name for name in dict.fromkeys((*order, *config.providers))
                      if config.providers[name].region == region)
    family_chains = {family: _view_chains(config, family, order, key, same) for family in FAMILIES}
    models = _owned_models(config, family_chains, order)
    if pinned:  # a name only another region serves goes to the region's providers, as a failover would
        models = tuple(owned if owned.owner in owned.chain.providers else
                       OwnedModel(owned.name, owned.family, owned.chain.first, owned.chain) for owned in models)
        # Validation sees to it (regions.residency: the region serves every family some provider
        # serves); a name missing here would take the unpinned lookups, so it is never served.
        missing = sorted({(o.name, o.family) for o in served} - {(o.name, o.family) for o in models})
        if missing:
            raise ValueError(f"the chains pinned to region {region} serve none of {missing}")
    return RegionView(key, region, pinned,
                      MappingProxyType({f: MappingProxyType(c) for f, c in family_chains.items() if c}),
                      models, _lane_models(config, models, lane_clusters))


def _view_chains(config: HapaxConfig, family: str, order: tuple[str, ...], key: str,
                 same: dict[tuple[str, ...], Chain]) -> dict[str, Chain]:
    """Per provider serving ``family``, the chain of a request it would serve first, in ``order``
    (on a pinned view, a provider of another region is replaced by the region's own)."""
    serving = [name for name in order if config.providers[name].serves(family)]
    if not serving:
        return {}
    chains = {}
    firsts = (*order, *(p for p in config.providers if p not in order))
    for first in (name for name in firsts if config.providers[name].serves(family)):
        providers = (first, *(p for p in serving if p != first)) if first in serving else tuple(serving)
        chain = same.get(providers)
        if chain is None:
            cluster = f"{chain_cluster_name(providers[0], family)}@{key}"
            attempts = config.retry.max_attempts or max(len(providers), 2)
            chain = same[providers] = Chain(providers[0], providers, attempts,
                                            max(config.providers[p].timeout for p in providers), cluster)
        chains[first] = chain
    return chains


def provider_cluster_name(provider: str) -> str:
    return f"provider.{provider}"


def chain_cluster_name(first: str, family: str = wire.ModelFamily.CHAT) -> str:
    # A provider name has no ".": the suffix cannot collide with another provider's chain.
    return f"chain.{first}" if family == wire.ModelFamily.CHAT else f"chain.{first}.{family}"


def base_path(provider: ProviderConfig) -> str:
    return urlsplit(provider.base_url).path.rstrip("/")


def _family_chains(config: HapaxConfig, family: str, preference: tuple[str, ...]) -> dict[str, Chain]:
    """A chain per provider serving ``family``: ``preference`` order first, then the others.

    One whose providers are the same as its first's chat chain is that chain (the same
    cluster): a config whose providers each serve every family has the chains it always had.
    """
    firsts = (*preference, *(p for p in config.providers if p not in preference))
    serving = [name for name in firsts if config.providers[name].serves(family)]
    chains = {}
    for first in serving:
        order = (first, *(p for p in preference if p != first and p in serving))
        chat = config.providers[first].serves(wire.ModelFamily.CHAT) and order == _chat_order(config, first,
                                                                                              preference)
        cluster = chain_cluster_name(first, wire.ModelFamily.CHAT if chat else family)
        attempts = config.retry.max_attempts or max(len(order), 2)
        chains[first] = Chain(first, order, attempts, max(config.providers[p].timeout for p in order), cluster)
    return chains


def _chat_order(config: HapaxConfig, first: str, preference: tuple[str, ...]) -> tuple[str, ...]:
    chat = [p for p in preference if config.providers[p].serves(wire.ModelFamily.CHAT)]
    return (first, *(p for p in chat if p != first))


def _owned_models(config: HapaxConfig, family_chains: Mapping[str, Mapping[str, Chain]],
                  preference: tuple[str, ...]) -> tuple[OwnedModel, ...]:
    """Per family, the first provider in preference order wins a model name both serve."""
    owned: dict[tuple[str, str], OwnedModel] = {}
    for name in [*preference, *config.providers]:
        p = config.providers[name]
        for model, families in p.models.items():
            names = (model, *p.aliases) if model == p.model else (model,)
            for family in families:
                if name not in family_chains.get(family, {}):
                    continue  # a pinned view whose region serves no such request: validation refused it
                for alias in names:
                    owned.setdefault((alias, family), OwnedModel(alias, family, name, family_chains[family][name]))
    return tuple(owned.values())


def _lane_models(config: HapaxConfig, models: Iterable[OwnedModel],
                 clusters: dict[tuple[str, tuple[str, ...]], str]) -> tuple[LaneModel, ...]:
    """``clusters``: (chain, lane providers) -> lane cluster, shared by the region views."""
    families = _lane_families(config)
    lanes = []
    for owned in models:
        first = config.providers[owned.owner]
        if first.type not in families or owned.name not in first.models or owned.family not in families[first.type]:
            continue  # another API, an alias the body must be rewritten for, or no route to take it
        path = base_path(first)
        providers = tuple(name for name in owned.chain.providers
                          if _serves_unchanged(config.providers[name], first.type, owned.name, owned.family, path))
        key = (owned.chain.cluster, providers)
        if key not in clusters:
            clusters[key] = _lane_cluster_name(owned.chain.cluster, clusters.values())
        lanes.append(LaneModel(owned.name, owned.family, owned.owner, providers, path, owned.chain, clusters[key],
                               first.type))
    return tuple(lanes)


# The handlers whose bodies a provider of a type takes as they are: OpenAI's chat, embeddings and
# Responses (a legacy completion is always translated), Anthropic's Messages.
LANE_HANDLERS: Mapping[str, tuple[str, ...]] = {
    "openai": (wire.Handler.CHAT, wire.Handler.EMBEDDINGS, wire.Handler.RESPONSES),
    "anthropic": (wire.Handler.MESSAGES,)}


def _lane_families(config: HapaxConfig) -> dict[str, frozenset[str]]:
    """Per provider type, the families some route's passthrough lane serves."""
    return {api: frozenset(wire.FAMILY_OF_HANDLER[wire.Handler(r.handler)] for r in config.routes
                           if r.handler in handlers) for api, handlers in LANE_HANDLERS.items()}


def _lane_cluster_name(chain_cluster: str, taken: Iterable[str]) -> str:
    """``lane.<chain>``; a second set of lane providers on the same chain gets ``lane.<chain>.2``..."""
    base = LANE_CLUSTER_PREFIX + chain_cluster.removeprefix("chain.")
    taken = set(taken)
    return next(name for n in itertools.count(1) if (name := base if n == 1 else f"{base}.{n}") not in taken)


def _serves_unchanged(provider: ProviderConfig, api: str, model: str, family: str, path: str) -> bool:
    return (provider.type == api and family in provider.models.get(model, ())
            and base_path(provider) == path)
