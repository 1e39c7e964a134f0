"""A tiny MaxMind DB writer: IPv4 networks -> country, for tests of Envoy's geoip filter.

The format (https://maxmind.github.io/MaxMind-DB/): a binary search tree over the address's
bits (24-bit records), 16 zero bytes, a data section of typed values, then the metadata
after a marker. Only what a country database needs is written: maps, strings, unsigned
integers and one array.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_STRING, _UINT16, _UINT32, _MAP, _UINT64, _ARRAY = 2, 5, 6, 7, 9, 11


class _Uint:
    def __init__(self, kind: int, value: int) -> None:
        self.kind, self.value = kind, value


def _control(kind: int, size: int) -> bytes:
    assert size < 29, "short values only"
    return bytes([(kind << 5) | size]) if kind <= 7 else bytes([size, kind - 7])


def _encode(value: object) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return _control(_STRING, len(raw)) + raw
    if isinstance(value, _Uint):
        raw = value.value.to_bytes((value.value.bit_length() + 7) // 8, "big")
        return _control(value.kind, len(raw)) + raw
    if isinstance(value, dict):
        return _control(_MAP, len(value)) + b"".join(_encode(k) + _encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _control(_ARRAY, len(value)) + b"".join(_encode(v) for v in value)
    raise TypeError(type(value).__name__)


def write_country_db(path: Path, networks: Mapping[str, str]) -> Path:
    """``networks``: IPv4 CIDR -> ISO country code. Other addresses have no record."""
    data = b""
    offsets: dict[str, int] = {}
    for code in dict.fromkeys(networks.values()):
        offsets[code] = len(data)
        data += _encode({"country": {"iso_code": code, "names": {"en": code}}})
    # The tree: nodes of two records, each a node index, "no data" or a data offset.
    nodes: list[list[tuple[str, int]]] = [[("empty", 0), ("empty", 0)]]
    for cidr, code in networks.items():
        network = ipaddress.IPv4Network(cidr)
        bits = int(network.network_address)
        node = 0
        for depth in range(network.prefixlen):
            bit = (bits >> (31 - depth)) & 1
            if depth == network.prefixlen - 1:
                nodes[node][bit] = ("data", offsets[code])
                break
            kind, target = nodes[node][bit]
            if kind != "node":
                nodes.append([("empty", 0), ("empty", 0)])
                target = len(nodes) - 1
                nodes[node][bit] = ("node", target)
            node = target
    count = len(nodes)

    def record(kind: str, value: int) -> int:
        return value if kind == "node" else count if kind == "empty" else count + 16 + value

    tree = b"".join(record(*left).to_bytes(3, "big") + record(*right).to_bytes(3, "big") for left, right in nodes)
    metadata = {
        "binary_format_major_version": _Uint(_UINT16, 2), "binary_format_minor_version": _Uint(_UINT16, 0),
        "build_epoch": _Uint(_UINT64, 1_700_000_000), "database_type": "GeoLite2-Country",
        "description": {"en": "Hapax test countries"}, "ip_version": _Uint(_UINT16, 4), "languages": ["en"],
        "node_count": _Uint(_UINT32, count), "record_size": _Uint(_UINT16, 24),
    }
    path.write_bytes(tree + bytes(16) + data + _METADATA_MARKER + _encode(metadata))
    return path
