"""A/B experiments in ext_proc: assigning the requests the router step routes, as Envoy would.

Envoy assigns the requests it routes from their body (control_plane/resources/experiments.py):
the route's hash policy hashes the sticky header, else the key id, with xxHash64 (seed 0), and
the weighted clusters take that value modulo their total weight, walking the variants' bucket
runs in order. A request the router step routes (a route with ``dedup``, a body Envoy could
not read) must land on the same variant, or a user would see two: so the same hash, here.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from hapax import wire

_P1, _P2, _P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P4, _P5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5
_MASK = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _MASK, 31) * _P1) & _MASK


def _merge(acc: int, value: int) -> int:
    return ((acc ^ _round(0, value)) * _P1 + _P4) & _MASK


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 (xxhash's specification): what Envoy's HashUtil::xxHash64 computes of a header."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _MASK, (seed + _P2) & _MASK, seed, (seed - _P1) & _MASK]
        while i + 32 <= n:
            for k in range(4):
                v[k] = _round(v[k], int.from_bytes(data[i + 8 * k:i + 8 * k + 8], "little"))
            i += 32
        acc = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _MASK
        for lane in v:
            acc = _merge(acc, lane)
    else:
        acc = (seed + _P5) & _MASK
    acc = (acc + n) & _MASK
    while i + 8 <= n:
        acc ^= _round(0, int.from_bytes(data[i:i + 8], "little"))
        acc = (_rotl(acc, 27) * _P1 + _P4) & _MASK
        i += 8
    if i + 4 <= n:
        acc ^= (int.from_bytes(data[i:i + 4], "little") * _P1) & _MASK
        acc = (_rotl(acc, 23) * _P2 + _P3) & _MASK
        i += 4
    while i < n:
        acc ^= (data[i] * _P5) & _MASK
        acc = (_rotl(acc, 11) * _P1) & _MASK
        i += 1
    acc ^= acc >> 33
    acc = (acc * _P2) & _MASK
    acc ^= acc >> 29
    acc = (acc * _P3) & _MASK
    return acc ^ (acc >> 32)


@dataclass(frozen=True)
class Variant:
    experiment: str
    name: str
    provider: str
    model: str  # what its provider is sent
    chain: str  # its chain's cluster
    buckets: int

    @property
    def labels(self) -> dict[str, str]:
        return dict(zip(wire.EXPERIMENT_LABELS, (self.experiment, self.name), strict=True))

    def requested(self, provider: str) -> str | None:
        """The model an attempt of this variant's request asks ``provider`` for: the variant's on its
        own provider; on a provider failed over to, none (its first chat model, as ``auto``)."""
        return self.model if provider == self.provider else None


def requested_model(variant: Variant | None, provider: str, model: str | None) -> str | None:
    """The model an attempt to ``provider`` asks for: the client's (``model``), or its variant's."""
    return model if variant is None else variant.requested(provider)


@dataclass(frozen=True)
class Experiment:
    name: str
    model: str  # "": any
    routes: frozenset[str]  # empty: every chat route
    sticky_header: str  # "": the key id alone
    variants: tuple[Variant, ...]

    def applies(self, route: str, model: str | None) -> bool:
        return (not self.routes or route in self.routes) and (not self.model or model == self.model)

    def assign(self, headers: Mapping[str, str]) -> Variant:
        """The variant Envoy's weighted clusters would pick for a request with these headers."""
        # Envoy's hash policy: the first header present decides (an empty value too).
        user = next((headers[name] for name in (self.sticky_header, wire.KEY_ID_HEADER) if name and name in headers),
                    None)
        value = xxh64(user.encode()) if user is not None else random.getrandbits(64)
        bucket = value % sum(v.buckets for v in self.variants)
        for variant in self.variants:
            if bucket < variant.buckets:
                return variant
            bucket -= variant.buckets
        raise AssertionError("a bucket beyond the variants'")  # buckets sum to their total
