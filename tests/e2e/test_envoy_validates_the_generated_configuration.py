"""What the control plane generates, as Envoy itself judges it (``envoy --mode validate``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import trustme
from envoy.config.bootstrap.v3 import bootstrap_pb2

from control_plane import resources as res
from control_plane.config import parse_config
from control_plane.snapshot import build_snapshot
from control_plane.static_bootstrap import (
    envoy_rejection,
    envoy_validate,
    static_bootstrap,
)
from hapax import roles
from hapax.envoy_process import envoy_binary
from tests.certificates import make_certificates, separate_http3, shared_tls_and_http3
from tests.seed import SEED_YAML
from tests.snapshots import CAPPED, EXT_PROC, KEYED, MIXED, REGIONAL, SECRETS, seed_snapshot, with_geoip
from tests.unit.test_passthrough import config as passthrough_config


def _validate(tmp_path: Path, bootstrap: bootstrap_pb2.Bootstrap):
    path = tmp_path / "bootstrap.pb"  # the form the control plane writes (static_bootstrap.write_bootstrap)
    path.write_bytes(bootstrap.SerializeToString())
    return envoy_validate(envoy_binary(), path)


# MIXED and CAPPED: providers whose timeout is shorter than the longest get attempt listeners.
# KEYED: the key check, and the admission check of limits.
@pytest.mark.parametrize("text", [SEED_YAML, MIXED, CAPPED, KEYED], ids=["seed", "mixed", "capped", "keyed"])
def test_envoy_validate_accepts_the_generated_configuration(tmp_path, text):
    tags = res.envoy_stats_tags(res.stats_label_keys(parse_config(text, env=SECRETS)))
    result = _validate(tmp_path, static_bootstrap(seed_snapshot(text), stats_tags=tags))
    assert result.returncode == 0, result.stderr + result.stdout


# REGIONAL: the regional chains and lookups, the untrusted region header's filter; with GeoIP,
# Envoy's geoip filter reading a (test-made) MaxMind database, which Envoy opens to validate;
# with limits and the queue, their descriptors' region entries.
@pytest.mark.parametrize("geoip", [False, True], ids=["regions", "regions-geoip-limits-queue"])
def test_envoy_validate_accepts_the_regional_configuration(tmp_path, geoip):
    limited = "limits: {departments: {ads: {tokens_per_day: 1000}}}\nqueue: {max_waiting: 10}\n"
    text = with_geoip(tmp_path, limited + REGIONAL) if geoip else REGIONAL  # geoip goes under regions: last
    tags = res.envoy_stats_tags(res.stats_label_keys(parse_config(text, env=SECRETS)))
    result = _validate(tmp_path, static_bootstrap(seed_snapshot(text), stats_tags=tags))
    assert result.returncode == 0, result.stderr + result.stdout


def test_envoy_validate_rejects_a_broken_configuration(tmp_path):
    # Proves the check above can fail: a route to a cluster Envoy doesn't have.
    bootstrap = static_bootstrap(seed_snapshot())
    kept = [c for c in bootstrap.static_resources.clusters if c.name != res.EXT_PROC_HTTP_CLUSTER]
    del bootstrap.static_resources.clusters[:]
    bootstrap.static_resources.clusters.extend(kept)
    result = _validate(tmp_path, bootstrap)
    assert result.returncode != 0
    assert res.EXT_PROC_HTTP_CLUSTER in result.stderr + result.stdout


def test_envoy_validates_the_lane_with_its_composite_filters_and_secrets(tmp_path):
    snapshot = build_snapshot(passthrough_config(), "v1", EXT_PROC)
    result = _validate(tmp_path, static_bootstrap(snapshot, stats_tags=res.envoy_stats_tags(("department",))))
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize("config_text", [shared_tls_and_http3, separate_http3], ids=["shared", "separate"])
def test_envoy_validates_the_tls_and_http3_listeners_with_their_secrets(tmp_path, config_text):
    certs = make_certificates(tmp_path)
    snapshot = build_snapshot(parse_config(config_text(certs), env={}), "v1", EXT_PROC)
    assert envoy_rejection(envoy_binary(), snapshot) == ""


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mutual_tls"])
def test_envoy_validates_the_bootstrap_hapax_envoy_writes_for_a_remote_control_plane(tmp_path, monkeypatch, tls):
    """``hapax envoy``'s bootstrap (the role apart): the control plane by name, the routes' label tags."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "hapax.yaml").write_text(KEYED)
    parser = argparse.ArgumentParser()
    roles.envoy_arguments(parser)
    options = ["--xds", "control-plane.hapax.svc:18000", "--config", str(tmp_path / "hapax.yaml"),
               "--node-id", "envoy-0"]
    if tls:
        ca = trustme.CA()
        issued = ca.issue_cert("envoy-0")
        ca.cert_pem.write_to_path(tmp_path / "fleet-ca.pem")
        issued.cert_chain_pems[0].write_to_path(tmp_path / "member.pem")
        issued.private_key_pem.write_to_path(tmp_path / "member.key")
        options += ["--xds-tls-cert", str(tmp_path / "member.pem"), "--xds-tls-key", str(tmp_path / "member.key"),
                    "--xds-tls-ca", str(tmp_path / "fleet-ca.pem")]
    command = roles.envoy_command(parser.parse_args(options), tmp_path)
    bootstrap = Path(command[command.index("-c") + 1]).read_text()
    assert "department" in bootstrap  # KEYED's route label tags Envoy's own stats
    assert "control-plane.hapax.svc" in bootstrap and ("fleet-ca.pem" in bootstrap) == tls
    assert not any(secret in bootstrap for secret in SECRETS.values())
    result = envoy_validate(envoy_binary(), Path(command[command.index("-c") + 1]))
    assert result.returncode == 0, result.stderr + result.stdout
