"""ext_proc's one resource, ``hapax.v1.Runtime``, from the plan.

API keys go only into this resource (and the lane's key secrets): no listener,
route or cluster ever carries one.
"""

from __future__ import annotations

from control_plane.config.model import HapaxConfig, LimitsConfig
from control_plane.plan import Plan, provider_cluster_name
from control_plane.pricing import price_for
from hapax.v1 import runtime_pb2


def runtime(plan: Plan, version: str) -> runtime_pb2.Runtime:
    """What ext_proc needs of the plan, at ``version``: it derives none of it again."""
    config = plan.config
    out = runtime_pb2.Runtime(config_version=version)
    for p in config.providers.values():
        provider = out.providers.add(
            name=p.name, type=p.type, model=p.model, aliases=list(p.aliases),
            base_url=p.base_url, cluster=provider_cluster_name(p.name),
            timeout_seconds=p.timeout, api_key=p.api_key, forward_headers=list(p.forward_headers),
            api_key_source=p.api_key_source, max_concurrent_requests=p.circuit_breaker.max_concurrent_requests,
            region=p.region or "",
            health_check=runtime_pb2.HealthCheck(
                interval_seconds=p.health_check.interval, timeout_seconds=p.health_check.timeout,
                healthy_threshold=p.health_check.healthy_threshold,
                unhealthy_threshold=p.health_check.unhealthy_threshold),
        )
        price = _price(p.model, config)
        if price is not None:
            provider.price.CopyFrom(price)
        for name, families in p.models.items():
            served = provider.models.add(name=name, families=list(families))
            price = _price(name, config)
            if price is not None:
                served.price.CopyFrom(price)
    for r in config.routes:
        route = out.routes.add(path=r.path, handler=r.handler, version=r.version, dedup=r.dedup)
        route.metrics_labels.update(dict(r.metrics_labels))
    for chain in plan.chains.values():  # the default chain first
        out.chains.add(cluster=chain.cluster, providers=list(chain.providers), attempts=chain.attempts)
    for owned in plan.models:
        out.models.add(name=owned.name, provider=owned.owner, chain=owned.chain.cluster, family=owned.family)
    out.auto_chains.update({family: chain.cluster for family, chain in plan.auto_chains.items()})
    _admission(config, out)
    _experiments(plan, out)
    _regions(plan, out)
    return out


def _experiments(plan: Plan, out: runtime_pb2.Runtime) -> None:
    for e in plan.config.experiments.values():
        experiment = out.experiments.add(name=e.name, model=e.model or "", routes=list(e.routes),
                                         sticky_header=e.sticky_header or "")
        for variant, buckets in zip(e.variants, e.buckets(), strict=True):
            experiment.variants.add(name=variant.name, provider=variant.provider, model=variant.model,
                                    chain=plan.variant_chain(variant).cluster, buckets=buckets)


def _regions(plan: Plan, out: runtime_pb2.Runtime) -> None:
    """Each region view's chains, for the router step to pick as Envoy's lookups do (regional.py)."""
    regions = plan.config.regions
    if regions is None:
        return
    out.regions.CopyFrom(runtime_pb2.Regions(header=regions.header, home=regions.home))
    if regions.geoip is not None:
        out.regions.countries.update(dict(regions.geoip.countries))
    out.regions.residency.update(dict(regions.residency))
    for key, view in plan.views.items():
        added = out.regions.views.add(key=key)
        for owned in view.models:
            added.models.add(name=owned.name, provider=owned.owner, chain=owned.chain.cluster, family=owned.family)
        added.auto_chains.update({family: chain.cluster for family, chain in view.auto_chains.items()})


def _admission(config: HapaxConfig, out: runtime_pb2.Runtime) -> None:
    """Who may call, and how much: the clients (by key id, never a key) and the limits."""
    out.keys_required = config.clients is not None
    for c in (config.clients or {}).values():
        client = out.clients.add(name=c.name, key_ids=[line.key_id for line in c.keys],
                                 department=c.department_name or "", limits=_limits(c.limits), priority=c.priority)
        client.metrics_labels.update(dict(c.metrics_labels))
    if config.ledger is not None:
        out.ledger.CopyFrom(runtime_pb2.Ledger(directory=config.ledger.directory, store=config.ledger.store,
                                               retention_days=config.ledger.retention_days))
    if config.queue is not None:
        out.queue.CopyFrom(runtime_pb2.Queue(max_waiting=config.queue.max_waiting,
                                             timeout_seconds=config.queue.timeout))
    if config.limited:
        admission = config.limits
        out.admission.CopyFrom(runtime_pb2.Admission(
            store=admission.store, fail_closed=admission.on_store_error == "closed",
            default_max_tokens=admission.default_max_tokens))
        for name, limits in admission.departments.items():
            out.admission.departments[name].CopyFrom(_limits(limits))


def _limits(limits: LimitsConfig) -> runtime_pb2.Limits:
    budget = limits.budget
    return runtime_pb2.Limits(
        requests_per_minute=limits.requests_per_minute or 0, requests_per_day=limits.requests_per_day or 0,
        tokens_per_minute=limits.tokens_per_minute or 0, tokens_per_day=limits.tokens_per_day or 0,
        budget_usd=budget.usd if budget else 0.0, budget_period=budget.period if budget else "")


def _price(model: str, config: HapaxConfig) -> runtime_pb2.ModelPrice | None:
    price = price_for(model, config.pricing)
    if price is None:
        return None
    return runtime_pb2.ModelPrice(input_per_million=price.input, output_per_million=price.output)
