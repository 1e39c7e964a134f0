"""Renders a snapshot as a self-contained (static) Envoy bootstrap.

Used to check what the control plane produces with ``envoy --mode validate``:
EDS clusters get their endpoints inline, the listener its routes inline and
TLS listeners their certificates as static secrets, so Envoy can validate
everything without a control plane. (Validate mode crashed on a secret
delivered over ADS, a finding from before the code existed.)
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.bootstrap.internal_listener.v3 import (  # noqa: F401 (for ParseDict: its type URL)
    internal_listener_pb2,
)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.quic.v3 import quic_transport_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from control_plane.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Snapshot
from hapax.envoy_process import ENVOY_BOOTSTRAP_EXTENSIONS, ENVOY_RUNTIME, admin_cluster, envoy_address


def _static_cluster(cluster: cluster_pb2.Cluster, snapshot: Snapshot) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster()
    out.CopyFrom(cluster)
    if out.type == cluster_pb2.Cluster.EDS:
        out.ClearField("eds_cluster_config")
        out.type = cluster_pb2.Cluster.STATIC
        out.load_assignment.CopyFrom(snapshot.of_type(ENDPOINT)[cluster.name])
    return out


def _inline_routes(listener, snapshot: Snapshot):
    out = type(listener)()
    out.CopyFrom(listener)
    for chain in out.filter_chains:
        for flt in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if flt.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                hcm.route_config.CopyFrom(snapshot.of_type(ROUTE)[hcm.rds.route_config_name])
                hcm.ClearField("rds")
                flt.typed_config.Pack(hcm)
    return out


def static_bootstrap(snapshot: Snapshot, admin_port: int = 0,
                     stats_tags: Sequence[dict[str, str]] = ()) -> bootstrap_pb2.Bootstrap:
    admin = f"127.0.0.1:{admin_port}"
    # The pieces every Hapax Envoy's bootstrap has, from the same dicts its real bootstrap uses.
    bootstrap = json_format.ParseDict({
        "node": {"id": "hapax-validate", "cluster": "hapax"},
        "admin": {"address": envoy_address(admin)},
        "stats_config": {"stats_tags": list(stats_tags)},
        "layered_runtime": {"layers": [{"name": "hapax", "static_layer": ENVOY_RUNTIME}]},
        "bootstrap_extensions": ENVOY_BOOTSTRAP_EXTENSIONS,
        "static_resources": {"clusters": [admin_cluster(admin)]},
    }, bootstrap_pb2.Bootstrap())
    static = bootstrap.static_resources
    static.clusters.extend(_static_cluster(c, snapshot) for c in snapshot.of_type(CLUSTER).values())
    static.listeners.extend(_static_secret_refs(_inline_routes(lst, snapshot))
                            for lst in snapshot.of_type(LISTENER).values())
    static.secrets.extend(snapshot.of_type(SECRET).values())
    return bootstrap


def _static_secret_refs(listener: listener_pb2.Listener) -> listener_pb2.Listener:
    """An SDS reference without a config source names a static secret."""
    for chain in listener.filter_chains:
        if not chain.HasField("transport_socket"):
            continue
        tls, quic = tls_pb2.DownstreamTlsContext(), quic_transport_pb2.QuicDownstreamTransport()
        holder = quic if chain.transport_socket.typed_config.Unpack(quic) else tls
        if holder is tls:
            chain.transport_socket.typed_config.Unpack(tls)
        context = quic.downstream_tls_context if holder is quic else tls
        for ref in context.common_tls_context.tls_certificate_sds_secret_configs:
            ref.ClearField("sds_config")
        chain.transport_socket.typed_config.Pack(holder)
    return listener


def validate_command(envoy: Path, bootstrap_file: Path) -> list[str]:
    return [str(envoy), "--mode", "validate", "-c", str(bootstrap_file), "--log-level", "error",
            "--disable-hot-restart"]


def write_bootstrap(snapshot: Snapshot, folder: Path, stats_tags: Sequence[dict[str, str]] = ()) -> Path:
    # Binary, not JSON: at 100 providers and 2,000 routes, rendering JSON took Python 4.8 s and
    # parsing it took Envoy longer than parsing the binary form (bench/results-scale.md).
    path = folder / "bootstrap.pb"
    path.write_bytes(static_bootstrap(snapshot, stats_tags=stats_tags).SerializeToString())
    return path


def envoy_validate(envoy: Path, bootstrap_file: Path) -> subprocess.CompletedProcess:
    """Envoy's validation of a bootstrap file, waited for (``hapax validate``, the tests)."""
    return subprocess.run(validate_command(envoy, bootstrap_file), capture_output=True, text=True)


def rejection_of(returncode: int, stdout: str, stderr: str) -> str:
    """What a finished ``envoy --mode validate`` says: "" when it accepts, else why it refuses."""
    if returncode == 0:
        return ""
    # Envoy may fail without a word (a crash): that is still a rejection, never a pass.
    how = f"exit code {returncode}"
    if returncode < 0:
        try:
            how = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    return (stderr or stdout).strip() or f"envoy --mode validate failed ({how}) and printed nothing"


def envoy_rejection(envoy: Path, snapshot: Snapshot, stats_tags: Sequence[dict[str, str]] = ()) -> str:
    """Why Envoy refuses ``snapshot`` (its own validation of a static copy), or "" if it accepts it.

    Blocks until Envoy is done: for ``hapax validate``. The control plane, whose event loop
    serves every client, uses control_plane/validation.py instead.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = write_bootstrap(snapshot, Path(tmp), stats_tags)
        result = envoy_validate(envoy, path)
    return rejection_of(result.returncode, result.stdout, result.stderr)
