"""Envoy stats by department: the routes' stat prefixes and the bootstrap's stat tags.

The supervisor and the CLI read these too: the tags are fixed when Envoy
starts, so they come from the config Envoy starts with.
"""

from __future__ import annotations

import re

from control_plane.config.model import HapaxConfig, RouteConfig

# A provider route's stats live under vhost.hapax.route.<stat_prefix>.*; the
# prefix is the route's path followed by its metrics labels as key.value pairs,
# and the bootstrap's stats_tags (fixed when Envoy starts) turn each into a tag:
#   vhost.hapax.route.v1_marketing_completions.department.marketing.upstream_rq_2xx
#   -> envoy_vhost_route_upstream_rq{envoy_route="v1_marketing_completions", department="marketing", ...}
# (envoy_route is Envoy's own tag for the segment after "route.").
_STAT_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def stats_label_keys(config: HapaxConfig) -> tuple[str, ...]:
    """Every metrics label key of the config's routes: the Envoy stat tags to create at start."""
    return tuple(sorted({key for route in config.routes for key in route.metrics_labels}))


def _stat_segment(text: str) -> str:
    return _STAT_UNSAFE.sub("_", text.strip("/")) or "_"


def route_stat_prefix(route: RouteConfig, label_keys: tuple[str, ...]) -> str:
    """Only keys Envoy has a tag for: any other would end up inside the metric's name."""
    parts = [_stat_segment(route.path)]
    for key in label_keys:
        if key in route.metrics_labels:
            parts += [key, _stat_segment(route.metrics_labels[key])]
    return ".".join(parts)


def envoy_stats_tags(label_keys: tuple[str, ...]) -> list[dict[str, str]]:
    """The bootstrap's stats_config.stats_tags for route_stat_prefix's layout."""
    route = r"^vhost\.[^.]+\.route\."
    # Pairs are skipped two segments at a time, so a key is never matched at a value's place.
    return [{"tag_name": key, "regex": route + r"[^.]+\.(?:[^.]+\.[^.]+\.)*?(" + key + r"\.([^.]+)\.)"}
             for key in label_keys]
