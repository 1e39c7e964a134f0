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

from ext_proc.access_log import AccessLogCounter
from ext_proc.health_app import health_app
from ext_proc.metrics import ConfigStatusCollector, GatewayMetrics, RestartsCollector
from ext_proc.provider_health import HoldOffBoard, ProviderProber
from ext_proc.restarts import RestartCounts
from ext_proc.runtime import RuntimeView
from ext_proc.service import Processor
from ext_proc.translators import TRANSLATORS, translator_for
from ext_proc.xds_client import RuntimeSubscription
from hapax import logs

log = logging.getLogger("hapax.ext_proc")


async def serve(args: argparse.Namespace) -> None:
    board = HoldOffBoard(Path(args.shared_dir) / "hold-off" if args.shared_dir else None)
    prober = ProviderProber(translator_for, hold_off_board=board)
    metrics = GatewayMetrics(prober)
    subscription = RuntimeSubscription(
        args.xds, frozenset(TRANSLATORS), args.node_id,
        on_update=lambda view: _apply(view, None if args.no_probe else prober, metrics),
    )
    metrics.add_collector(ConfigStatusCollector(lambda: subscription.status))
    restarts = RestartCounts(Path(args.shared_dir) if args.shared_dir else None)
    metrics.add_collector(RestartsCollector(restarts.read))
    xds_task = asyncio.create_task(subscription.run())

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    pb_grpc.add_ExternalProcessorServicer_to_server(Processor(lambda: subscription.view, metrics, prober.hold_off,
                                                         subscription.view_for), server)
    access_log = AccessLogCounter(lambda: subscription.view, metrics, prober.hold_off)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(access_log, server)
    host = args.listen.rsplit(":", 1)[0]
    grpc_port = server.add_insecure_port(args.listen)
    await server.start()

    runner = web.AppRunner(health_app(subscription, prober, metrics, restarts), access_log=None)
    await runner.setup()
    health_host, _, health_port = args.health_listen.rpartition(":")
    site = web.TCPSite(runner, health_host, int(health_port))
    await site.start()
    # aiohttp exposes no public accessor; its _server, typed AbstractServer | None, is the
    # asyncio.Server that start() just opened.
    listening = cast(asyncio.Server, site._server)
    actual_health_port = listening.sockets[0].getsockname()[1]

    logs.announce("ready", component="ext_proc", grpc=f"{host}:{grpc_port}",
                  http=f"{health_host}:{actual_health_port}", node=subscription.node_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    xds_task.cancel()
    await prober.close()
    await server.stop(grace=2)
    await runner.cleanup()


def _apply(view: RuntimeView, prober: ProviderProber | None, metrics: GatewayMetrics) -> None:
    """A new runtime version: probe its providers, label series after its routes."""
    if prober is not None:
        prober.update(view.providers, {name: p.health_check for name, p in view.providers.items()})
    metrics.configure(view)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hapax-ext-proc")
    parser.add_argument("--xds", required=True, help="control plane ADS address, host:port")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--health-listen", default="127.0.0.1:0")
    parser.add_argument("--node-id", default=None)
    parser.add_argument("--no-probe", action="store_true",
                        help="leave health checks to another worker of the same gateway (the first one)")
    parser.add_argument("--shared-dir", default=None,
                        help="state the ext_proc workers of one gateway share (retry-after deadlines)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="json", choices=("json", "text"))
    args = parser.parse_args(argv)
    logs.setup("ext_proc", args.log_level, args.log_format)
    # SIGHUP reloads the config in the control plane; here (a terminal closing
    # on the whole process group) it must not take the gateway down.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    asyncio.run(serve(args))
    return 0
