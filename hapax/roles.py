"""One role each, for an orchestrator that scales them apart: ``hapax control-plane``,
``hapax ext-proc`` and ``hapax envoy``.

``hapax serve`` runs the three on one host and wires them together itself. Apart, each is
started with where the others are: the control plane with its config and the ext_proc
addresses it gives every Envoy (the same for all of them: an ext_proc runs beside each Envoy,
at a fixed address each resolves locally, since a request's router and upstream steps share
nothing but what Envoy carries); an ext_proc and an Envoy with where the control plane
listens, and the fleet's certificates when that channel leaves the host (mutual TLS,
``control_plane.tls``).

The first two are the processes' own entry points (``python -m control_plane``, ``python -m
ext_proc``). ``hapax envoy`` writes Envoy's bootstrap (hapax/envoy_process.py) for a control
plane elsewhere and becomes Envoy (``exec``), so the orchestrator's signals reach Envoy itself.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path

from hapax.envoy_process import XdsClientTls, envoy_binary, render_bootstrap

DEFAULT_ADMIN = "127.0.0.1:9901"


def envoy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--xds", required=True, help="the control plane: host:port (or unix:/path on this host)")
    parser.add_argument("--config", help="hapax.yaml, for the metrics labels Envoy's own stats are tagged with "
                                         "(the control plane serves everything else)")
    parser.add_argument("--node-id", default=None, help="this Envoy's name to the control plane (default: the "
                                                        "host name)")
    parser.add_argument("--admin", default=DEFAULT_ADMIN,
                        help=f"Envoy's admin: host:port or unix:/path (default {DEFAULT_ADMIN}; never a public "
                             "address: POST /quitquitquit stops it)")
    parser.add_argument("--xds-tls-cert", help="this Envoy's certificate, for a control plane with mutual TLS")
    parser.add_argument("--xds-tls-key", help="its private key")
    parser.add_argument("--xds-tls-ca", help="the CA that signed the control plane's certificate")
    parser.add_argument("--concurrency", type=int, help="worker threads (default: one per CPU)")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--max-heap-mb", type=int, default=1024,
                        help="Envoy's heap ceiling: past 98 %% of it, new requests get 503 overloaded")


class RoleError(Exception):
    """A role started with arguments it cannot run with."""


def envoy_command(args: argparse.Namespace, workdir: Path) -> list[str]:
    """Writes the bootstrap into ``workdir``; Envoy's command line."""
    tls_files = (args.xds_tls_cert, args.xds_tls_key, args.xds_tls_ca)
    if any(tls_files) and not all(tls_files):
        raise RoleError("--xds-tls-cert, --xds-tls-key and --xds-tls-ca go together")
    tls = XdsClientTls(*tls_files) if all(tls_files) else None
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(render_bootstrap(
        node_id=args.node_id or socket.gethostname(), admin=args.admin, xds=args.xds, xds_tls=tls,
        stats_tags=_stats_tags(args.config), max_heap_bytes=args.max_heap_mb << 20))
    return [str(envoy_binary()), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", args.log_level,
            "--component-log-level", "misc:error",
            *([] if args.concurrency is None else ["--concurrency", str(args.concurrency)])]


def run_envoy(args: argparse.Namespace) -> int:
    """Becomes Envoy: never returns unless the arguments are wrong."""
    command = envoy_command(args, Path(tempfile.mkdtemp(prefix="hapax-envoy-")))
    os.execv(command[0], command)
    return 1  # not reached: execv replaced the process


def _stats_tags(config_path: str | None) -> list[dict[str, str]]:
    if config_path is None:
        return []
    from control_plane.config.load import load_config
    from control_plane.resources.stats import envoy_stats_tags, stats_label_keys

    return envoy_stats_tags(stats_label_keys(load_config(config_path)))
