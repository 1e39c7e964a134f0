"""The small top-level sections: ``retry``, ``pricing``, ``logging``, ``ext_proc`` and ``ledger``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from control_plane.config.errors import _Issues, _join
from control_plane.config.model import (
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_WORKERS,
    ExtProcConfig,
    LedgerConfig,
    LoggingConfig,
    RetryConfig,
)
from control_plane.config.validate.values import (
    _duration,
    _expected,
    _mapping,
    _not_one_of,
    _positive_integer,
    _reject_unknown_keys,
    _server_url,
    _text,
)
from control_plane.pricing import DEFAULT_PRICES, ModelPrice

_EXT_PROC_KEYS = ("workers", "max_streams_per_worker")
_LEDGER_KEYS = ("directory", "retention_days", "store")
_LEDGER_STORE_SCHEMES = ("postgresql", "postgres")
DEFAULT_LEDGER_DIRECTORY = "hapax-ledger"
_LOGGING_KEYS = ("level", "format", "access_log")
_PRICE_KEYS = ("input", "output")
_RETRY_KEYS = ("max_attempts", "backoff")
_BACKOFF_KEYS = ("base_interval", "max_interval")


def _ext_proc(value: Any, issues: _Issues) -> ExtProcConfig:
    node = {} if value is None else _mapping(value, "ext_proc", issues)
    if not node:
        return ExtProcConfig()
    _reject_unknown_keys(node, "ext_proc", _EXT_PROC_KEYS, issues)
    streams = ExtProcConfig.max_streams_per_worker
    if node.get("max_streams_per_worker") is not None:
        streams = _positive_integer(node["max_streams_per_worker"], "ext_proc.max_streams_per_worker", streams,
                                     issues)
    if node.get("workers") is None:
        return ExtProcConfig(max_streams_per_worker=streams)
    workers = _positive_integer(node["workers"], "ext_proc.workers", 1, issues)
    if workers > MAX_WORKERS:
        issues.error("ext_proc.workers", f"at most {MAX_WORKERS} workers, got {workers}")
    return ExtProcConfig(min(workers, MAX_WORKERS), streams)


def _ledger(value: Any, issues: _Issues, base_dir: Path) -> LedgerConfig | None:
    """``ledger: {}`` keeps it beside the config file; a relative directory is the config file's."""
    if value is None:
        return None
    node = _mapping(value, "ledger", issues)
    if node is None:
        return None
    _reject_unknown_keys(node, "ledger", _LEDGER_KEYS, issues)
    directory = DEFAULT_LEDGER_DIRECTORY
    if node.get("directory") is not None:
        directory = _text(node["directory"], "ledger.directory", issues) or DEFAULT_LEDGER_DIRECTORY
    retention = LedgerConfig.retention_days
    if node.get("retention_days") is not None:
        retention = _positive_integer(node["retention_days"], "ledger.retention_days", retention, issues)
    store = "" if node.get("store") is None else _server_url(
        node["store"], "ledger.store", _LEDGER_STORE_SCHEMES, "omit it for SQLite files in directory", issues)
    if store and node.get("directory") is not None:
        issues.error("ledger", "set directory (SQLite files) or store (PostgreSQL), not both")
    return LedgerConfig("" if store else str((base_dir / directory).resolve()), retention, store)


def _logging(value: Any, issues: _Issues) -> LoggingConfig:
    default = LoggingConfig()
    node = {} if value is None else _mapping(value, "logging", issues)
    if not node:
        return default
    _reject_unknown_keys(node, "logging", _LOGGING_KEYS, issues)
    level = _one_of(node.get("level"), "logging.level", "log level", LOG_LEVELS, default.level, issues)
    fmt = _one_of(node.get("format"), "logging.format", "log format", LOG_FORMATS, default.format, issues)
    access_log = node.get("access_log", default.access_log)
    if not isinstance(access_log, bool):
        issues.error("logging.access_log", _expected("true or false", access_log))
        access_log = default.access_log
    return LoggingConfig(level, fmt, access_log)


def _one_of(value: Any, path: str, kind: str, choices: Sequence[str], default: str, issues: _Issues) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or value.lower() not in choices:
        issues.error(path, _not_one_of(kind, str(value), choices))
        return default
    return value.lower()


def _pricing(value: Any, issues: _Issues) -> dict[str, ModelPrice]:
    table = dict(DEFAULT_PRICES)
    node = {} if value is None else _mapping(value, "pricing", issues)
    for model, entry in (node or {}).items():
        path = _join("pricing", model)
        if not isinstance(model, str) or not model.strip():
            issues.error(path, _expected("a model name", model))
            continue
        prices = _mapping(entry, path, issues)
        if prices is None:
            continue
        _reject_unknown_keys(prices, path, _PRICE_KEYS, issues)
        missing = [k for k in _PRICE_KEYS if k not in prices]
        if missing:
            issues.error(path, f"needs both input and output (USD per million tokens); missing: {', '.join(missing)}")
            continue
        input_price, output_price = [_price(prices[k], _join(path, k), issues) for k in _PRICE_KEYS]
        if input_price is not None and output_price is not None:
            table[model] = ModelPrice(input_price, output_price)
    return table


def _price(value: Any, path: str, issues: _Issues) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
        issues.error(path, _expected("a non-negative number of US dollars per million tokens", value))
        return None
    return float(value)


def _retry(value: Any, issues: _Issues) -> RetryConfig:
    node = {} if value is None else _mapping(value, "retry", issues)
    if node is None:
        return RetryConfig()
    _reject_unknown_keys(node, "retry", _RETRY_KEYS, issues)
    attempts = node.get("max_attempts")
    max_attempts = None if attempts is None else _positive_integer(attempts, "retry.max_attempts", 1, issues)
    base, most = _backoff(node.get("backoff"), issues)
    return RetryConfig(max_attempts, base, most)


def _backoff(value: Any, issues: _Issues) -> tuple[float, float]:
    default = RetryConfig()
    node = {} if value is None else _mapping(value, "retry.backoff", issues)
    if not node:
        return default.backoff_base, default.backoff_max
    _reject_unknown_keys(node, "retry.backoff", _BACKOFF_KEYS, issues)
    base = default.backoff_base
    if node.get("base_interval") is not None:
        base = _duration(node["base_interval"], "retry.backoff.base_interval", base, issues)
    most = max(base * 10, default.backoff_max) if node.get("max_interval") is None else _duration(
        node["max_interval"], "retry.backoff.max_interval", default.backoff_max, issues)
    if most < base:
        issues.error("retry.backoff.max_interval",
                     f"must be at least base_interval ({base:g}s), got {most:g}s")
    return base, most
