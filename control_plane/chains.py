"""Failover order: which providers a request tries, and the Envoy clusters that carry them."""

from __future__ import annotations

from control_plane.config.model import HapaxConfig


def provider_cluster_name(provider: str) -> str:
    return f"provider.{provider}"


def chain_cluster_name(first: str) -> str:
    return f"chain.{first}"


def chain_order(config: HapaxConfig, first: str) -> tuple[str, ...]:
    return (first, *(p for p in config.provider_preference if p != first))


def chain_firsts(config: HapaxConfig) -> tuple[str, ...]:
    """Every provider gets a chain: preference order first, then the others."""
    rest = tuple(p for p in config.providers if p not in config.provider_preference)
    return (*config.provider_preference, *rest)


def attempts(config: HapaxConfig, first: str) -> int:
    """Attempts per request on ``first``'s chain, the first included (ext_proc counts alike)."""
    return config.retry.max_attempts or max(len(chain_order(config, first)), 2)
