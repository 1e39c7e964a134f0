"""The ext_proc process: gRPC ExternalProcessor + HTTP /health + xDS client."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import cast

import grpc
from aiohttp import web
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from ext_proc.access_log import AccessLogCounter
from ext_proc.admission import Admission, AdmissionService
from ext_proc.coalescing import Coalescer
from ext_proc.health_app import health_app, verdict_app
from ext_proc.ledger import Ledger
from ext_proc.metrics import ConfigStatusCollector, GatewayMetrics, QueueCollector, RestartsCollector
from ext_proc.provider_health import HoldOffBoard, ProviderProber, VerdictBoard
from ext_proc.queue import FairQueue
from ext_proc.restarts import RestartCounts
from ext_proc.runtime import Provider, RuntimeView
from ext_proc.service import Processor
from ext_proc.translators import TRANSLATORS, translator_for
from ext_proc.xds_client import RuntimeSubscription
from hapax import logs, wire
from hapax.local_socket import LocalAddress, private_socket

log = logging.getLogger("hapax.ext_proc")


async def serve(args: argparse.Namespace) -> None:
    shared = Path(args.shared_dir) if args.shared_dir else None
    prober = ProviderProber(translator_for,
                            hold_off_board=HoldOffBoard(shared / wire.HOLD_OFF_DIR if shared else None),
                            verdict_board=VerdictBoard(shared / wire.VERDICTS_DIR if shared else None))
    metrics = GatewayMetrics(prober)
    ledger = Ledger(metrics)
    subscription = RuntimeSubscription(
        args.xds, frozenset(TRANSLATORS), args.node_id,
        on_update=lambda view: _apply(view, None if args.no_probe else prober, metrics, ledger),
        credentials=_xds_credentials(args),
    )
    metrics.add_collector(ConfigStatusCollector(lambda: subscription.status))
    restarts = RestartCounts(Path(args.shared_dir) if args.shared_dir else None)
    metrics.add_collector(RestartsCollector(restarts.read))
    xds_task = asyncio.create_task(subscription.run())

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    admission = Admission(metrics, shared)
    coalescer = Coalescer()
    pb_grpc.add_ExternalProcessorServicer_to_server(Processor(lambda: subscription.view, metrics, prober.hold_off,
                                                         subscription.view_for, prober.unavailable_reasons,
                                                         admission, coalescer, ledger), server)
    access_log = AccessLogCounter(lambda: subscription.view, metrics, prober.hold_off, admission, ledger)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(access_log, server)
    queue = FairQueue(lambda provider: _slots(subscription.view, provider),
                      lambda department, seconds, result: metrics.queue_waited(department, seconds, result.value))
    metrics.add_collector(QueueCollector(queue.waiting_by_department))
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
        AdmissionService(lambda: subscription.view, admission, queue), server)
    grpc_port = server.add_insecure_port(args.listen)
    await server.start()
    grpc_address = private_socket(args.listen) or f"{args.listen.rsplit(':', 1)[0]}:{grpc_port}"

    runners = [web.AppRunner(app, access_log=None) for app in (
        health_app(subscription, prober, metrics, restarts, coalescer), verdict_app(prober))]
    for runner in runners:
        await runner.setup()
    http_address = await _start_site(runners[0], args.health_listen)
    verdict_address = await _start_site(runners[1], args.verdict_listen)

    logs.announce(wire.READY_EVENT, component="ext_proc", grpc=grpc_address, http=http_address,
                  verdicts=verdict_address, node=subscription.node_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    xds_task.cancel()
    await prober.close()
    await server.stop(grace=2)
    await admission.close()
    await ledger.close()  # what it holds is written before the worker goes
    for runner in runners:
        await runner.cleanup()


def _slots(view: RuntimeView | None, provider: str) -> int:
    """A provider's concurrency limit, as the current runtime says (the queue's slots for it)."""
    known = view.providers.get(provider) if view is not None else None
    return known.max_concurrent_requests if known is not None else Provider.max_concurrent_requests


def _xds_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """This worker's certificate for a control plane that asks for one (control_plane.tls)."""
    files = (args.xds_tls_cert, args.xds_tls_key, args.xds_tls_ca)
    if not any(files):
        return None
    if not all(files):
        raise SystemExit("ext_proc: --xds-tls-cert, --xds-tls-key and --xds-tls-ca go together")
    cert, key, ca = (Path(f).read_bytes() for f in files)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


async def _start_site(runner: web.AppRunner, address: str) -> str:
    """Serves the HTTP side on ``unix:/path`` or ``host:port``; returns where it listens."""
    parsed = LocalAddress.parse(address)
    if parsed.path:
        await web.UnixSite(runner, parsed.path).start()
        return cast(str, private_socket(address))
    host = parsed.host
    site = web.TCPSite(runner, host, parsed.port)
    await site.start()
    # aiohttp exposes no public accessor; its _server, typed AbstractServer | None, is the
    # asyncio.Server that start() just opened.
    listening = cast(asyncio.Server, site._server)
    return f"{host}:{listening.sockets[0].getsockname()[1]}"


def _apply(view: RuntimeView, prober: ProviderProber | None, metrics: GatewayMetrics, ledger: Ledger) -> None:
    """A new runtime version: probe its providers, label series after its routes, keep its ledger."""
    if prober is not None:
        prober.update(view.providers, {name: p.health_check for name, p in view.providers.items()})
    metrics.configure(view)
    ledger.configure(view.ledger)


def main(argv: list[str] | None = None, prog: str = "hapax-ext-proc") -> int:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--xds", required=True, help="control plane ADS address: unix:/path or host:port")
    parser.add_argument("--listen", default="127.0.0.1:0", help="gRPC for Envoy: unix:/path or host:port")
    parser.add_argument("--health-listen", default="127.0.0.1:0",
                        help="HTTP for Envoy (/health, /metrics): unix:/path or host:port")
    parser.add_argument("--verdict-listen", default="127.0.0.1:0",
                        help="the provider verdicts Envoy's health checks poll: host:port (Envoy checks IPs only)")
    parser.add_argument("--xds-tls-cert", help="this worker's certificate, for a control plane with mutual TLS")
    parser.add_argument("--xds-tls-key", help="its private key")
    parser.add_argument("--xds-tls-ca", help="the CA that signed the control plane's certificate")
    parser.add_argument("--node-id", default=None)
    parser.add_argument("--no-probe", action="store_true",
                        help="leave health checks to another worker of the same gateway (the first one)")
    parser.add_argument("--shared-dir", default=None,
                        help="state the ext_proc workers of one gateway share (retry-after deadlines, verdicts)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="json", choices=("json", "text"))
    args = parser.parse_args(argv)
    logs.setup("ext_proc", args.log_level, args.log_format)
    # SIGHUP reloads the config in the control plane; here (a terminal closing
    # on the whole process group) it must not take the gateway down.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    asyncio.run(serve(args))
    return 0
