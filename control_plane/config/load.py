"""Reading a configuration: text or file -> ``HapaxConfig``, or a ``ConfigError`` listing every problem.

It goes through three steps: YAML (with line numbers for syntax errors) ->
``${ENV}`` expansion of string values -> validation into the dataclasses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from control_plane.config.env import _expand
from control_plane.config.errors import ConfigError, ConfigIssue, _Issues, _plural
from control_plane.config.model import HapaxConfig, RegionsConfig
from control_plane.config.validate import _build
from control_plane.config.yaml_loader import _load_yaml, _YamlSyntaxError

__all__ = ["MAX_CONFIG_BYTES", "load_config", "parse_config", "summarize"]

# A real hapax.yaml is a few KiB; a bigger one is a mistake or an attack, and the
# YAML parser's time and memory grow with it before any check can run.
MAX_CONFIG_BYTES = 1024 * 1024
_TOO_BIG = f"the file is larger than {MAX_CONFIG_BYTES // 1024} KiB; a configuration is a few KiB"


def parse_config(
    text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None
) -> HapaxConfig:
    """Parse and validate YAML text; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    issues = _Issues()
    if len(text) > MAX_CONFIG_BYTES:  # characters, at least as many bytes
        raise ConfigError(source, [ConfigIssue("", _TOO_BIG)])
    try:
        data = _expand(_load_yaml(text), "", env, issues)
        config = _build(data, source, issues)
    except _YamlSyntaxError as err:
        raise ConfigError(source, [ConfigIssue("", str(err))]) from None
    except RecursionError:  # a self-referencing alias (&a [*a]) or absurd nesting
        raise ConfigError(source, [ConfigIssue("", "the document nests too deeply or refers to itself")]) from None
    if config is None:
        raise ConfigError(source, issues.errors)
    return config


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> HapaxConfig:
    """Read and parse a file; an unreadable file is a ConfigError too."""
    source = os.fspath(path)
    try:
        with Path(path).open("rb") as file:  # never more than the cap, whatever the file's size
            raw = file.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(source, [ConfigIssue("", _TOO_BIG)])
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(source, [ConfigIssue("", f"cannot read the file: {reason}")]) from None
    return parse_config(text, source=source, env=env)


def summarize(config: HapaxConfig) -> str:
    """One line for humans: what a valid file configures."""
    providers = f"{_plural(len(config.providers), 'provider')} ({', '.join(config.providers)})"
    host = f"[{config.server.host}]" if ":" in config.server.host else config.server.host
    parts = [
        providers,
        f"preference {' > '.join(config.provider_preference)}",
        _plural(len(config.routes), "route"),
        *([_regions_summary(config.regions)] if config.regions is not None else []),
        f"listening on {host}:{config.server.port}",
    ]
    return f"{config.source}: valid — {', '.join(parts)}"


def _regions_summary(regions: RegionsConfig) -> str:
    pinned = "".join(f", {department} pinned to {region}" for department, region in regions.residency.items())
    return f"regions {', '.join(regions.names)} (home {regions.home}){pinned}"
