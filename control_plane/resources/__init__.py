"""Envoy resources and ext_proc's runtime from a config (being split into one module per idea)."""

from control_plane.resources.clusters import *  # noqa: F401,F403  (temporary, until the split)
