"""ext_proc's node id: one per process of a fleet, even where every one is process 1.

The control plane keys its xDS clients by node id (control_plane/ads.py): two ext_procs with
one id are one client to it, and its rollout waits for only one of them.
"""

from __future__ import annotations

import pytest

from ext_proc import xds_client
from ext_proc.xds_client import RuntimeSubscription


def node_id_in(monkeypatch: pytest.MonkeyPatch, hostname: str, pid: int) -> str:
    monkeypatch.setattr(xds_client.socket, "gethostname", lambda: hostname)
    monkeypatch.setattr(xds_client.os, "getpid", lambda: pid)
    return RuntimeSubscription("127.0.0.1:1", frozenset()).node_id


def test_the_ext_procs_of_two_pods_are_two_nodes_though_each_is_process_1(monkeypatch):
    first = node_id_in(monkeypatch, "hapax-gateway-7d9f-abcde", 1)

    assert first != node_id_in(monkeypatch, "hapax-gateway-7d9f-fghij", 1)


def test_two_ext_procs_on_one_host_are_two_nodes(monkeypatch):
    assert node_id_in(monkeypatch, "host", 41) != node_id_in(monkeypatch, "host", 42)


def test_a_node_id_given_is_used_as_it_is():
    assert RuntimeSubscription("127.0.0.1:1", frozenset(), node_id="ext_proc-9997-1").node_id == "ext_proc-9997-1"
