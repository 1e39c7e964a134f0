"""A process of another local user attacks a running gateway: it reaches no internal channel.

Before: the control plane's xDS and ext_proc's gRPC listened on loopback TCP without
authentication, so a process running as ``nobody`` fetched the providers' keys from the
runtime resource, had ext_proc inject a key into its request, forged 429s that put every
provider on hold, and POSTed Envoy's /quitquitquit. Now they are Unix sockets in a directory
of mode 0700 (hapax/supervisor.py: LocalChannels), and the only TCP ports are the clients',
the metrics port and the read-only provider verdicts on loopback.

The attacker is a real process under another uid (``setpriv``), which needs root to start.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from hapax import wire
from hapax.fakes import FakeOpenAI
from tests.conftest import Gateway, gateway_config

NOBODY = 65534
KEY = "sk-attacker-must-not-see-this"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="starting a process as another user needs root and setpriv")

# Run as nobody: tries each target and reports what happened, as JSON on stdout.
ATTACKER = r"""
import http.client, json, os, socket, sys
targets = json.loads(sys.argv[1])
out = {"uid": os.getuid()}
try:
    out["listdir"] = sorted(os.listdir(targets["workdir"]))
except OSError as err:
    out["listdir"] = type(err).__name__
for name, path in targets["sockets"].items():
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(path)
        out[name] = "connected"
    except OSError as err:
        out[name] = type(err).__name__
    finally:
        sock.close()
for name, (host, port, method, path) in targets["http"].items():
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path)
        out[name] = conn.getresponse().status
    except OSError as err:
        out[name] = type(err).__name__
    finally:
        conn.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def gateway(fake_host, start_gateway):
    with fake_host.serving(FakeOpenAI(api_key=KEY, model="gpt-4o-mini")) as (fake,):
        config = gateway_config({"primary": {"type": "openai", "model": "gpt-4o-mini", "api_key": "${KEY}",
                                             "base_url": fake.base_url}})
        # Every address, as an edge gateway binds; two workers, each with its own channels.
        config["server"]["host"] = "0.0.0.0"
        config["ext_proc"] = {"workers": 2}
        yield start_gateway(config, env={"KEY": KEY})


def as_nobody(targets: dict) -> dict:
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", ATTACKER, json.dumps(targets)],
        capture_output=True, text=True, timeout=30, cwd="/")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def workdir_of(gateway: Gateway) -> Path:
    assert gateway.admin_url.startswith(wire.UNIX_SOCKET_PREFIX), gateway.admin_url
    return Path(gateway.admin_url.removeprefix(wire.UNIX_SOCKET_PREFIX)).parent


def test_another_user_can_open_no_internal_channel(gateway):
    workdir = workdir_of(gateway)
    sockets = {p.name: str(p) for p in workdir.glob("*.sock")}
    assert {"xds.sock", "envoy-admin.sock", "ext_proc-1.grpc.sock", "ext_proc-1.http.sock",
            "ext_proc-2.grpc.sock", "ext_proc-2.http.sock"} <= set(sockets)
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(Path(p).stat().st_mode) for p in sockets.values()} == {0o600}

    seen = as_nobody({"workdir": str(workdir), "sockets": sockets, "http": {}})

    assert seen["uid"] == NOBODY
    assert seen["listdir"] == "PermissionError"
    # xDS (the runtime holds the keys), ext_proc's gRPC (it injects them; its access-log
    # service takes 429s), Envoy's admin (/quitquitquit): none of them even connects.
    assert {seen[name] for name in sockets} == {"PermissionError"}
    # ...while the gateway, its own user, serves through all of them.
    assert gateway.admin("/ready").strip() == "LIVE"


def test_the_metrics_port_serves_envoy_stats_read_only(gateway):
    metrics = urlsplit(gateway.metrics_url)
    host, port = metrics.hostname, metrics.port
    seen = as_nobody({"workdir": "/nonexistent", "sockets": {}, "http": {
        "stats": (host, port, "GET", wire.ENVOY_STATS_PATH),
        "quit": (host, port, "POST", "/quitquitquit"),
        "quit_as_stats": (host, port, "POST", wire.ENVOY_STATS_PATH),
        "config_dump": (host, port, "GET", "/config_dump"),
        "stats_traversal": (host, port, "GET", wire.ENVOY_STATS_PATH + "/../config_dump"),
        "logging": (host, port, "POST", "/logging?level=trace"),
    }})
    assert seen["stats"] == 200
    assert {seen[k] for k in ("quit", "quit_as_stats", "config_dump", "stats_traversal", "logging")} == {404}
    with urllib.request.urlopen(gateway.envoy_stats_url, timeout=5) as resp:
        stats = resp.read().decode()
    assert "envoy_cluster_upstream_cx_total" in stats and KEY not in stats
    assert gateway.admin("/ready").strip() == "LIVE"  # nothing stopped it


def test_the_gateway_opens_tcp_ports_for_clients_and_metrics_and_loopback_verdicts_only(gateway):
    listening = tcp_listeners(process_tree(gateway.proc.pid))
    public = {port for ip, port in listening if ip not in LOOPBACK}
    loopback = {port for ip, port in listening if ip in LOOPBACK}
    assert public == {urlsplit(gateway.url).port, urlsplit(gateway.metrics_url).port}
    # On loopback, the provider verdicts only (one port per worker), which answer nothing else.
    assert len(loopback) == 2, listening
    for port in loopback:
        assert verdict_port_serves_only_verdicts(port), port


def verdict_port_serves_only_verdicts(port: int) -> bool:
    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    return (status(wire.provider_verdict_path("primary")) in (200, 503)
            and {status(p) for p in (wire.METRICS_PATH, wire.HEALTH_PATH, wire.ADMIN_HEALTH_PATH)} == {404})


LOOPBACK = {"127.0.0.1", "::1"}


def process_tree(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return tree


def tcp_listeners(pids: set[int]) -> set[tuple[str, int]]:
    """(ip, port) of every listening TCP socket the processes hold."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                found.add(_ip_port(fields[1], family))
    return found


def _ip_port(text: str, family: int) -> tuple[str, int]:
    hex_ip, hex_port = text.split(":")
    raw = bytes.fromhex(hex_ip)
    if family == 4:
        ip = ".".join(str(b) for b in raw[::-1])
    else:
        words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
        ip = "::1" if b"".join(words) == bytes(15) + b"\x01" else b"".join(words).hex()
    return ip, int(hex_port, 16)
