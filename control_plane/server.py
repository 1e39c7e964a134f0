"""The control plane process: config file -> snapshots -> ADS.

It serves the snapshot built from the file, watches the file (editors that
save by rename included) and publishes a new version only when the new file is
valid and yields a consistent snapshot; otherwise it logs why, with the key
paths, and the last good version keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
from watchfiles import awatch

from control_plane.ads import AdsServer, add_to_server
from control_plane.cache import SnapshotCache
from control_plane.config.errors import ConfigError, ConfigIssue
from control_plane.config.load import load_config, summarize
from control_plane.config.model import ControlPlaneConfig, FleetTls, HapaxConfig
from control_plane.plan import make_plan
from control_plane.resources.names import Address, ExtProcEndpoints
from control_plane.resources.stats import envoy_stats_tags, stats_label_keys
from control_plane.rollout import Rollout
from control_plane.snapshot import InconsistentSnapshot, Snapshot, snapshot_of_plan
from control_plane.validation import VALIDATION_TIMEOUT, NotChecked, envoy_rejection
from hapax import logs, wire
from hapax.envoy_process import EnvoyNotFound, envoy_binary
from hapax.local_socket import LocalAddress, private_socket
from hapax.v1 import runtime_pb2

log = logging.getLogger("hapax.control_plane")


class ControlPlane:
    cache: SnapshotCache
    ads: AdsServer
    rollout: Rollout
    fleet: ControlPlaneConfig
    stats_label_keys: tuple[str, ...]
    certificate_files: list[Path]

    def __init__(self, config_path: Path, ext_proc: ExtProcEndpoints, port: int | None = None,
                 metrics_port: int | None = None, validation_timeout: float = VALIDATION_TIMEOUT) -> None:
        """Call ``start()`` next: the first version is built (and checked by Envoy) there, on the loop."""
        self.config_path = config_path
        self.ext_proc = ext_proc
        self.port = port
        self.metrics_port = metrics_port
        self.validation_timeout = validation_timeout
        # Until the first version is served, `hapax serve` is waiting: each step that may take
        # long is announced, with its bound, so that the wait scales with it.
        self.announce_progress = True
        # Versions count up from the start time in milliseconds, so that they keep
        # rising across a control plane restart too.
        self._generation = int(time.time() * 1000)
        self._digest = ""
        self.envoy = _envoy_for_validation()
        self._unchecked = False  # whether the last version built went without Envoy's validation

    async def start(self) -> None:
        """Builds the first version from the file; ConfigError when it cannot be served."""
        first = self._load()
        # Envoy's stat tags are fixed when it starts, from this same first config.
        self.stats_label_keys = stats_label_keys(first)
        snapshot = await self._snapshot_for(first)
        if snapshot is None:
            raise ConfigError(str(self.config_path), [ConfigIssue("", "no configuration could be built")])
        self.cache = SnapshotCache(snapshot)
        self.cache.update_status(self._record_check(snapshot.version))
        self.ads = AdsServer(self.cache)
        self.rollout = Rollout(self.cache, self.ads)
        self.certificate_files = _certificate_files(first)
        # Where a fleet reaches it, and with what TLS: read once, at start (a change needs a restart).
        self.fleet = first.control_plane

    def _load(self) -> HapaxConfig:
        config = load_config(self.config_path)
        if self.port is None and self.metrics_port is None:
            return config
        server = config.server
        return replace(config, server=replace(
            server, port=server.port if self.port is None else self.port,
            metrics_port=server.metrics_port if self.metrics_port is None else self.metrics_port))

    async def _snapshot_for(self, config: HapaxConfig) -> Snapshot | None:
        """The next version for ``config``; None when it is the content being served already.

        Versions are content-addressed (a digest of every resource) and
        monotonic (a generation number in front), so every consumer can tell
        which of two versions is newer and whether two are the same.
        """
        plan = make_plan(config)
        draft = snapshot_of_plan(plan, "draft", self.ext_proc, self.stats_label_keys)
        digest = hashlib.sha256()
        for type_url in sorted(draft.resources):
            for name, msg in sorted(draft.resources[type_url].items()):
                digest.update(name.encode())
                digest.update(msg.SerializeToString(deterministic=True))
        if digest.hexdigest() == self._digest:
            return None
        rejection = await self._envoy_rejection(config, draft)
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
        return snapshot_of_plan(plan, version, self.ext_proc, self.stats_label_keys)

    def _record_check(self, version: str) -> Callable[[runtime_pb2.ConfigStatus], None]:
        """The status update saying whether Envoy validated ``version`` (the one just built)."""
        unchecked = version if self._unchecked else ""

        def record(status: runtime_pb2.ConfigStatus) -> None:
            status.unchecked_version = unchecked

        return record

    async def _envoy_rejection(self, config: HapaxConfig, draft: Snapshot) -> str:
        """Envoy's verdict on ``draft``: "" also when it has none to give (no binary, too slow: logged,
        and the version it becomes said to be unchecked in the status)."""
        self._unchecked = self.envoy is None
        if self.envoy is None:
            return ""
        if self.announce_progress:
            logs.announce(wire.PROGRESS_EVENT, component="control_plane", step="Envoy's validation",
                          **{wire.PROGRESS_BUDGET: self.validation_timeout})
        began = time.monotonic()
        try:
            rejection = await envoy_rejection(self.envoy, draft, config.source, self.validation_timeout,
                                              envoy_stats_tags(self.stats_label_keys))
        except NotChecked as err:
            log.warning(str(err), extra={"file": config.source, "timeout_seconds": self.validation_timeout})
            self._unchecked = True
            return ""
        log.info("Envoy validated the configuration", extra={"file": config.source, "accepted": not rejection,
                                                              "seconds": round(time.monotonic() - began, 3)})
        return rejection

    async def reload(self) -> bool:
        """Reads the file again: True when a new version is published."""
        try:
            config = self._load()
            snapshot = await self._snapshot_for(config)
        except (ConfigError, InconsistentSnapshot) as err:
            self._refuse(err)
            return False
        if snapshot is None:
            log.info("config file saved without a change", extra={"version": self.cache.snapshot.version})
            self.cache.update_status(_unchanged)
            return False
        self.rollout.start(snapshot)
        self.cache.update_status(_applied)
        self.cache.update_status(self._record_check(snapshot.version))
        self.certificate_files = _certificate_files(config)
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

        where = _refused_paths(err)

        def record(status: runtime_pb2.ConfigStatus) -> None:
            status.reloads_invalid += 1
            status.last_error = text
            status.last_error_source = getattr(err, "source", str(self.config_path))
            status.last_error_paths[:] = where

        self.cache.update_status(record)

    def watched_files(self) -> list[Path]:
        """The config file and the certificate files the serving version uses (a renewal is a reload)."""
        return [self.config_path, *self.certificate_files]

    def _certificates(self) -> tuple[bytes | None, ...]:
        return tuple(_read(path) for path in self.certificate_files)

    def _watched_content(self) -> tuple[bytes | None, tuple[bytes | None, ...]]:
        return _read(self.config_path), self._certificates()

    async def watch(self, triggers: ReloadTriggers | None = None, loaded: bytes | None = None) -> None:
        """Reloads when the file's content changes, and on every ``triggers.add("SIGHUP")``.

        File events come from the file's folder, so a save by rename, a delete
        then re-create and a swapped symlink (a Kubernetes ConfigMap) are all
        seen. A burst of writes is grouped (watchfiles' debounce) and the file
        is read after it, so the last write wins. A slow check of the content
        catches what events miss (an edit while the control plane started, a
        file system without inotify). A deleted file changes nothing: the last
        good version keeps serving until the file is back. ``loaded`` is the
        content read at start-up (None: read it now).
        """
        triggers = triggers or ReloadTriggers()
        last = (_read(self.config_path) if loaded is None else loaded, self._certificates())
        sources = [asyncio.create_task(_file_events(self.watched_files, triggers)),
                   asyncio.create_task(_poll_content(self._watched_content, triggers))]
        gone = empty_deferred = False
        try:
            while True:
                reasons = await triggers.next()
                content = _read(self.config_path)
                forced = RELOAD_SIGNAL in reasons
                if (content is None) != gone:
                    gone = content is None
                    if gone:
                        log.warning("config file is gone; the last good version keeps serving until it is back",
                                    extra={"file": str(self.config_path)})
                    else:
                        log.info("config file is back", extra={"file": str(self.config_path)})
                if gone and not forced:
                    continue
                if content is not None and not content.strip() and not forced and not empty_deferred:
                    # Most likely an editor between truncating the file and writing it: look again shortly.
                    empty_deferred = True
                    asyncio.get_running_loop().call_later(EMPTY_FILE_GRACE, triggers.add, "empty file")
                    continue
                empty_deferred = False
                if (content, self._certificates()) == last and not forced:
                    continue
                last = (content, self._certificates())
                log.info("config reload", extra={"trigger": ", ".join(sorted(reasons)), "file": str(self.config_path)})
                try:
                    await self.reload()
                except Exception:  # a bug must not end the watch: the next edit gets its chance
                    log.exception("config reload failed; the last good version keeps serving")
        finally:
            for task in sources:
                task.cancel()
            await asyncio.gather(*sources, return_exceptions=True)


# File events: a burst is grouped until it has been quiet for STEP (at most DEBOUNCE).
WATCH_DEBOUNCE_MS = 300
WATCH_STEP_MS = 50
# The content check behind the file events; a change must hold for one interval.
POLL_SECONDS = 2.0
EMPTY_FILE_GRACE = 0.5  # an empty file is read again once before it counts
RELOAD_SIGNAL = "SIGHUP"  # the trigger that reloads even an unchanged file


class ReloadTriggers:
    """Why the file should be read again, gathered until the watch gets to them."""

    def __init__(self) -> None:
        self._reasons: set[str] = set()
        self._event = asyncio.Event()

    def add(self, reason: str) -> None:
        self._reasons.add(reason)
        self._event.set()

    async def next(self) -> set[str]:
        await self._event.wait()
        self._event.clear()
        reasons, self._reasons = self._reasons, set()
        return reasons


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


async def _file_events(paths: Callable[[], list[Path]], triggers: ReloadTriggers) -> None:
    """A trigger per batch of changes in the folders of the files (and of their targets, for symlinks)."""
    warned = False
    while True:
        folders = _folders(paths())
        try:
            async with contextlib.aclosing(awatch(*folders, watch_filter=None, recursive=False,
                                                  debounce=WATCH_DEBOUNCE_MS, step=WATCH_STEP_MS)) as batches:
                # Handled once the watch is in place (the first await of `batches`): a change made
                # before it, while starting or while a folder was replaced, is not missed.
                triggers.add("watch started")
                async for changes in batches:
                    triggers.add("file event")
                    warned = False
                    if any(changed in folders for _, changed in changes) or _folders(paths()) != folders:
                        break  # a folder went or was replaced, or the files moved (new certificate paths): watch anew
        except Exception as err:  # noqa: BLE001 - e.g. the folder is gone, or no inotify watches are left
            if not warned:
                log.warning("cannot watch the config folder; checking the file every few seconds instead",
                            extra={"folders": folders, "error": str(err)})
                warned = True
            await asyncio.sleep(POLL_SECONDS)


def _folders(paths: list[Path]) -> list[str]:
    return sorted({str(p.absolute().parent) for p in paths} | {str(p.resolve().parent) for p in paths})


async def _poll_content(content: Callable[[], object], triggers: ReloadTriggers) -> None:
    """A trigger whenever the content has held still for a whole interval (the watch skips it if already read)."""
    previous = content()
    while True:
        await asyncio.sleep(POLL_SECONDS)
        current = content()
        if current == previous:
            triggers.add("content check")
        previous = current


def _certificate_files(config: HapaxConfig) -> list[Path]:
    certificates = [config.server.tls, config.server.http3.certificate]
    return sorted({Path(f) for c in certificates if c is not None for f in (c.cert_file, c.key_file)})


def _refused_paths(err: ConfigError | InconsistentSnapshot) -> list[str]:
    """Where an edit is wrong, without what it says: the key paths are safe to show anyone."""
    if not isinstance(err, ConfigError):
        return ["(the generated configuration)"]
    return list(dict.fromkeys(issue.path or "(the file)" for issue in err.issues))


def _clear_refusal(status: runtime_pb2.ConfigStatus) -> None:
    # What the files say now is what is served: nothing is refused any more.
    status.last_error = ""
    status.last_error_source = ""
    del status.last_error_paths[:]


def _unchanged(status: runtime_pb2.ConfigStatus) -> None:
    status.reloads_unchanged += 1
    _clear_refusal(status)


def _applied(status: runtime_pb2.ConfigStatus) -> None:
    status.reloads_applied += 1
    _clear_refusal(status)


def _envoy_for_validation() -> Path | None:
    """The Envoy binary that checks each candidate; a control plane without one checks less."""
    try:
        return envoy_binary()
    except EnvoyNotFound:
        log.warning("no envoy binary here: configurations are validated without Envoy's own checks")
        return None


async def serve(args: argparse.Namespace) -> None:
    endpoints = ExtProcEndpoints(grpc=tuple(args.ext_proc_grpc), http=tuple(args.ext_proc_http),
                                 verdicts=tuple(args.ext_proc_verdicts))
    loaded = _read(Path(args.config))  # read before the first load: any edit from here on is seen
    plane = ControlPlane(Path(args.config), endpoints, args.port, args.metrics_port, args.validation_timeout)
    await plane.start()
    server = grpc.aio.server()
    add_to_server(plane.ads, server)
    listen = args.listen or plane.fleet.listen
    port = _add_port(server, listen, plane.fleet.tls)
    await server.start()
    xds = private_socket(listen) or f"{listen.rsplit(':', 1)[0]}:{port}"
    stop = asyncio.Event()
    triggers = ReloadTriggers()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP (`kill -HUP`, or forwarded by `hapax serve`) reads the file again, changed or not.
    loop.add_signal_handler(signal.SIGHUP, triggers.add, RELOAD_SIGNAL)
    watcher = asyncio.create_task(plane.watch(triggers, loaded))
    logs.announce(wire.READY_EVENT, component="control_plane", xds=xds,
                  version=plane.cache.snapshot.version)
    plane.announce_progress = False  # stdout is drained, not read, from here on
    await stop.wait()
    watcher.cancel()
    plane.rollout.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await server.stop(grace=1)


class OpenListen(Exception):
    """A TCP address beyond loopback without mutual TLS: the runtime carries the providers' keys."""


def _add_port(server: grpc.aio.Server, listen: str, tls: FleetTls | None) -> int:
    """ADS on ``listen``: a Unix socket (private by its directory, `hapax serve`), loopback TCP,
    or TCP with mutual TLS, where only a client with a certificate of ``tls``'s CA connects."""
    address = LocalAddress.parse(listen)
    if tls is None or address.path:
        if not address.only_this_host:
            raise OpenListen(f"the control plane would serve the providers' keys on {listen} to anyone: "
                             "set control_plane.tls (mutual TLS) or listen on loopback")
        return server.add_insecure_port(listen)
    credentials = grpc.ssl_server_credentials(
        [(tls.certificate.key_pem, tls.certificate.cert_pem)],
        root_certificates=tls.client_ca_pem, require_client_auth=True)
    return server.add_secure_port(listen, credentials)


def _ext_proc_address(text: str) -> Address:
    """An ext_proc address Envoy is given as an endpoint: a Unix socket or an IP address, never a
    name (endpoints are not resolved)."""
    try:
        address = Address.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected unix:/path or ip:port") from None
    if not address.path and not address.host_is_ip:
        raise argparse.ArgumentTypeError(
            f"{text!r}: an IP address or a Unix socket, not a name: every Envoy is given it as an endpoint, "
            "which Envoy does not resolve (run ext_proc beside each Envoy, at the same local address)")
    return address


def main(argv: list[str] | None = None, prog: str = "hapax-control-plane") -> int:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", required=True)
    parser.add_argument("--listen", default=None,
                        help="ADS address: unix:/path (what hapax serve uses) or host:port "
                             "(default: control_plane.listen, with control_plane.tls)")
    parser.add_argument("--ext-proc-grpc", action="append", required=True, type=_ext_proc_address,
                        help="unix:/path or ip:port of each ext_proc worker's gRPC, as every Envoy reaches it")
    parser.add_argument("--ext-proc-http", action="append", required=True, type=_ext_proc_address,
                        help="unix:/path or ip:port of each worker's HTTP side (/health, /metrics)")
    parser.add_argument("--ext-proc-verdicts", action="append", required=True, type=_ext_proc_address,
                        help="ip:port of each worker's provider verdicts (Envoy health-checks IPs only)")
    parser.add_argument("--port", type=int, default=None, help="override server.port of the file")
    parser.add_argument("--metrics-port", type=int, default=None, help="override server.metrics_port")
    parser.add_argument("--validation-timeout", type=float, default=VALIDATION_TIMEOUT,
                        help="seconds Envoy's validation of a version may take; past them the version is "
                             "served without it (the rollout's make-before-break and NACK handling guard it)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="json", choices=("json", "text"))
    args = parser.parse_args(argv)
    logs.setup("control_plane", args.log_level, args.log_format)
    # A SIGHUP while starting must not kill us; the file is read at start anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        asyncio.run(serve(args))
    except ConfigError as err:
        log.error("invalid config", extra={"file": err.source, "errors": [str(i) for i in err.issues]})
        return 1
    except OpenListen as err:
        log.error("refusing to start", extra={"reason": str(err)})
        return 1
    return 0
