"""The control plane process: config file -> snapshots -> ADS.

It serves the snapshot built from the file, watches the file (editors that
save by rename included) and publishes a new version only when the new file is
valid and yields a consistent snapshot; otherwise it logs why, with the key
paths, and the last good version keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import signal
from dataclasses import replace
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from watchfiles import awatch

from control_plane.ads import AdsServer, SnapshotCache
from control_plane.config import (
    ConfigError,
    ConfigIssue,
    HapaxConfig,
    load_config,
    summarize,
)
from control_plane.resources import (
    Address,
    ExtProcEndpoints,
    envoy_stats_tags,
    stats_label_keys,
)
from control_plane.snapshot import InconsistentSnapshot, Snapshot, build_snapshot
from control_plane.static_bootstrap import envoy_rejection
from hapax import logs
from hapax.envoy_process import EnvoyNotFound, envoy_binary
from hapax.v1 import runtime_pb2

log = logging.getLogger("hapax.control_plane")


class ControlPlane:
    def __init__(self, config_path: Path, ext_proc: ExtProcEndpoints, port: int | None = None,
                 metrics_port: int | None = None) -> None:
        self.config_path = config_path
        self.ext_proc = ext_proc
        self.port = port
        self.metrics_port = metrics_port
        self._generation = 0
        self._digest = ""
        self.envoy = _envoy_for_validation()
        first = self._load()
        # Envoy's stat tags are fixed when it starts, from this same first config.
        self.stats_label_keys = stats_label_keys(first)
        snapshot = self._snapshot_for(first)
        if snapshot is None:
            raise ConfigError(str(config_path), [ConfigIssue("", "no configuration could be built")])
        self.cache = SnapshotCache(snapshot)
        self.ads = AdsServer(self.cache)

    def _load(self) -> HapaxConfig:
        config = load_config(self.config_path)
        overrides = {k: v for k, v in (("port", self.port), ("metrics_port", self.metrics_port)) if v is not None}
        return replace(config, server=replace(config.server, **overrides)) if overrides else config

    def _snapshot_for(self, config: HapaxConfig) -> Snapshot | None:
        """The next version for ``config``; None when it is the content being served already.

        Versions are content-addressed (a digest of every resource) and
        monotonic (a generation number in front), so every consumer can tell
        which of two versions is newer and whether two are the same.
        """
        draft = build_snapshot(config, "draft", self.ext_proc, self.stats_label_keys)
        digest = hashlib.sha256()
        for type_url in sorted(draft.resources):
            for name, msg in sorted(draft.resources[type_url].items()):
                digest.update(name.encode())
                digest.update(msg.SerializeToString(deterministic=True))
        if digest.hexdigest() == self._digest:
            return None
        rejection = envoy_rejection(self.envoy, draft, envoy_stats_tags(self.stats_label_keys)) if self.envoy else ""
        if rejection:
            raise ConfigError(config.source, [ConfigIssue("", f"Envoy rejects the generated configuration: "
                                                              f"{rejection}")])
        self._generation += 1
        self._digest = digest.hexdigest()
        version = f"{self._generation}-{self._digest[:10]}"
        for warning in config.warnings:
            log.warning("config warning", extra={"file": config.source, "issue": str(warning)})
        untagged = sorted(set(stats_label_keys(config)) - set(self.stats_label_keys))
        if untagged:
            log.warning("new metrics label keys reach Envoy's own stats only after a restart "
                        "(Hapax's /metrics has them now)", extra={"keys": untagged})
        return build_snapshot(config, version, self.ext_proc, self.stats_label_keys)

    def reload(self) -> bool:
        """Reads the file again: True when a new version is published."""
        try:
            config = self._load()
            snapshot = self._snapshot_for(config)
        except (ConfigError, InconsistentSnapshot) as err:
            self._refuse(err)
            return False
        if snapshot is None:
            log.info("config file saved without a change", extra={"version": self.cache.snapshot.version})
            self.cache.update_status(lambda status: setattr(status, "reloads_unchanged", status.reloads_unchanged + 1))
            return False
        self.cache.set(snapshot)
        self.cache.update_status(_applied)
        log.info("config version published", extra={"version": snapshot.version, "summary": summarize(config)})
        return True

    def _refuse(self, err: ConfigError | InconsistentSnapshot) -> None:
        if isinstance(err, ConfigError):
            problems = [str(i) for i in err.issues]
            text = "\n".join(f"{err.source}: {p}" for p in problems)
        else:
            problems = list(err.problems)
            text = "inconsistent configuration: " + "; ".join(problems)
        log.error("config rejected; keeping the last good version",
                  extra={"file": getattr(err, "source", str(self.config_path)), "errors": problems,
                         "serving_version": self.cache.snapshot.version})

        def record(status: runtime_pb2.ConfigStatus) -> None:
            status.reloads_invalid += 1
            status.last_error = text

        self.cache.update_status(record)

    async def watch(self) -> None:
        target = self.config_path.resolve()
        async for changes in awatch(target.parent, debounce=200, step=50):
            if any(Path(p).resolve() == target for _, p in changes) and target.exists():
                self.reload()


def _applied(status: runtime_pb2.ConfigStatus) -> None:
    status.reloads_applied += 1
    status.last_error = ""


def _envoy_for_validation() -> Path | None:
    """The Envoy binary that checks each candidate; a control plane without one checks less."""
    try:
        return envoy_binary()
    except EnvoyNotFound:
        log.warning("no envoy binary here: configurations are validated without Envoy's own checks")
        return None


async def serve(args: argparse.Namespace) -> None:
    endpoints = ExtProcEndpoints(
        grpc=tuple(_address(a) for a in args.ext_proc_grpc),
        http=tuple(_address(a) for a in args.ext_proc_http),
    )
    plane = ControlPlane(Path(args.config), endpoints, args.port, args.metrics_port)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(plane.ads, server)
    port = server.add_insecure_port(args.listen)
    await server.start()
    host = args.listen.rsplit(":", 1)[0]
    logs.announce("ready", component="control_plane", xds=f"{host}:{port}",
                  version=plane.cache.snapshot.version)
    watcher = asyncio.create_task(plane.watch())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    watcher.cancel()
    await server.stop(grace=1)


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return Address(host, int(port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hapax-control-plane")
    parser.add_argument("--config", required=True)
    parser.add_argument("--listen", default="127.0.0.1:18000")
    parser.add_argument("--ext-proc-grpc", action="append", required=True)
    parser.add_argument("--ext-proc-http", action="append", required=True)
    parser.add_argument("--port", type=int, default=None, help="override server.port of the file")
    parser.add_argument("--metrics-port", type=int, default=None, help="override server.metrics_port")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="json", choices=("json", "text"))
    args = parser.parse_args(argv)
    logs.setup("control_plane", args.log_level, args.log_format)
    try:
        asyncio.run(serve(args))
    except ConfigError as err:
        log.error("invalid config", extra={"file": err.source, "errors": [str(i) for i in err.issues]})
        return 1
    return 0
