"""The ``regions`` section: where a request comes from, how its traffic fails over between
regions, and the departments pinned to one (data residency).

A region is whatever the providers' ``region`` keys name; every region this section names must
be one of them, and ``home`` is required as soon as a provider has a region.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from control_plane.config.errors import _index, _Issues, _join
from control_plane.config.model import (
    DEFAULT_REGION_HEADER,
    FAMILIES,
    GeoIpConfig,
    ProviderConfig,
    RegionsConfig,
)
from control_plane.config.validate.values import (
    _expected,
    _list,
    _mapping,
    _quote,
    _reject_unknown_keys,
    _string,
    _suggestion,
    _text,
)
from hapax import wire

_REGIONS_KEYS = ("home", "header", "trusted_sources", "failover", "geoip", "residency")
_GEOIP_KEYS = ("database", "countries")
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
# Headers a client may not choose as the region's: the gateway's and Envoy's own, HTTP's.
_RESERVED_HEADER_PREFIXES = ("x-envoy-", ":")
_RESERVED_HEADERS = ("host", *wire.CLIENT_CREDENTIAL_HEADERS, "content-type", "content-length",
                     wire.REQUEST_ID_HEADER, "x-forwarded-for", *wire.STEP_REQUEST_HEADERS, wire.KEY_ID_HEADER,
                     wire.GEO_COUNTRY_HEADER)
_COUNTRY = re.compile(r"[A-Z]{2}")


def _regions(value: Any, providers: Mapping[str, ProviderConfig], issues: _Issues,
             base_dir: Path) -> RegionsConfig | None:
    names = tuple(dict.fromkeys(p.region for p in providers.values() if p.region is not None))
    if value is None:
        if names:
            issues.error("regions", f"is required when providers have a region ({', '.join(names)}): "
                                    "set at least regions.home, the gateway's own region")
        return None
    node = _mapping(value, "regions", issues)
    if node is None:
        return None
    _reject_unknown_keys(node, "regions", _REGIONS_KEYS, issues)
    if not names:
        issues.error("regions", "no provider has a region: give each regional deployment's provider "
                                "a 'region' (providers.NAME.region)")
        return None
    home = _known(node.get("home"), "regions.home", names, issues) if node.get("home") is not None else None
    if node.get("home") is None:
        issues.error("regions.home", "is required: the gateway's own region, for requests that name none")
    header = _header(node.get("header"), issues)
    trusted = _trusted_sources(node.get("trusted_sources"), issues)
    if not trusted:
        issues.warn("regions.trusted_sources", f"none: no peer's {header} header is honoured, so requests take "
                                               "their country's region (geoip) or home's")
    failover = _failover(node.get("failover"), names, issues)
    geoip = _geoip(node.get("geoip"), names, issues, base_dir)
    residency = _residency(node.get("residency"), names, providers, issues)
    if home is None:
        return None
    return RegionsConfig(home, header, trusted, failover, geoip, residency)


def _known(value: Any, path: str, names: tuple[str, ...], issues: _Issues) -> str | None:
    name = _string(value, path, issues)
    if name is None:
        return None
    if name not in names:
        close = _suggestion(name, names)
        hint = f"; did you mean {close!r}?" if close else ""
        issues.error(path, f"unknown region {_quote(name)}: no provider has it "
                           f"(the providers' regions: {', '.join(names)}){hint}")
        return None
    return name


def _header(value: Any, issues: _Issues) -> str:
    if value is None:
        return DEFAULT_REGION_HEADER
    text = _text(value, "regions.header", issues)
    if text is None:
        return DEFAULT_REGION_HEADER
    name = text.lower()
    if (not _HEADER_NAME.fullmatch(name) or name.startswith(_RESERVED_HEADER_PREFIXES)
            or name in _RESERVED_HEADERS):
        issues.error("regions.header", f"expected a header name of letters, digits and '-' that is not "
                                       f"HTTP's, Envoy's or a credential's, got {_quote(text)}")
        return DEFAULT_REGION_HEADER
    return name


def _trusted_sources(value: Any, issues: _Issues) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _list(value, "regions.trusted_sources", issues)
    ranges = []
    for i, item in enumerate(items or ()):
        path = _index("regions.trusted_sources", i)
        text = _string(item, path, issues)
        if text is None:
            continue
        try:
            ranges.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            issues.error(path, f"expected an IP address or a CIDR range such as 10.0.0.0/8, got {_quote(text)}")
    return tuple(ranges)


def _failover(value: Any, names: tuple[str, ...], issues: _Issues) -> dict[str, tuple[str, ...]]:
    """Every region's order: the configured one, then the regions it leaves out, in file order."""
    node = {} if value is None else _mapping(value, "regions.failover", issues) or {}
    configured: dict[str, tuple[str, ...]] = {}
    for region, order in node.items():
        path = _join("regions.failover", region)
        if _known(region, path, names, issues) is None:
            continue
        items = _list(order, path, issues)
        listed: list[str] = []
        for i, item in enumerate(items or ()):
            other = _known(item, _index(path, i), names, issues)
            if other is None:
                continue
            if other == region:
                issues.error(_index(path, i), f"a region does not fail over to itself ({region!r})")
            elif other in listed:
                issues.error(_index(path, i), f"region {other!r} is listed twice")
            else:
                listed.append(other)
        configured[region] = tuple(listed)
    return {region: (*configured.get(region, ()),
                     *(r for r in names if r != region and r not in configured.get(region, ())))
            for region in names}


def _geoip(value: Any, names: tuple[str, ...], issues: _Issues, base_dir: Path) -> GeoIpConfig | None:
    if value is None:
        return None
    node = _mapping(value, "regions.geoip", issues)
    if node is None:
        return None
    _reject_unknown_keys(node, "regions.geoip", _GEOIP_KEYS, issues)
    database = None
    if node.get("database") is None:
        issues.error("regions.geoip.database", "is required: a MaxMind country (or city) database, .mmdb")
    else:
        text = _text(node["database"], "regions.geoip.database", issues)
        if text is not None:
            file = (base_dir / text).resolve()
            if not file.is_file():
                issues.error("regions.geoip.database", f"no such file: {text}")
            database = str(file)
    countries: dict[str, str] = {}
    node_countries = node.get("countries")
    if node_countries is None:
        issues.error("regions.geoip.countries", "is required: each country code's region, e.g. {DE: eu}")
    for code, region in (_mapping(node_countries, "regions.geoip.countries", issues) or {}).items() \
            if node_countries is not None else ():
        key = _join("regions.geoip.countries", code)
        if not isinstance(code, str) or not _COUNTRY.fullmatch(code):
            issues.error(key, _expected("an ISO 3166 country code in capitals, such as DE", code))
            continue
        known = _known(region, key, names, issues)
        if known is not None:
            countries[code] = known
    return GeoIpConfig(database, countries) if database else None


def _residency(value: Any, names: tuple[str, ...], providers: Mapping[str, ProviderConfig],
               issues: _Issues) -> dict[str, str]:
    node = {} if value is None else _mapping(value, "regions.residency", issues) or {}
    pinned = {}
    served = {family for p in providers.values() for family in FAMILIES if p.serves(family)}
    for department, region in node.items():
        path = _join("regions.residency", department)
        if not isinstance(department, str) or not department.strip():
            issues.error(path, _expected("a department name", department))
            continue
        known = _known(region, path, names, issues)
        if known is None:
            continue
        # A pinned request of a kind its region cannot serve would have nowhere to go.
        missing = [f for f in sorted(served) if not any(p.region == known and p.serves(f)
                                                        for p in providers.values())]
        if missing:
            issues.error(path, f"no provider in region {known!r} serves {' or '.join(missing)} requests, "
                               f"which department {department!r} could send: give one there a model of that kind")
            continue
        pinned[department] = known
    return pinned
