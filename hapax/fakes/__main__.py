"""Run all three fakes until SIGINT/SIGTERM: ``python -m hapax.fakes``.

Prints one JSON line per provider (``{"provider", "base_url", "api_key"}``) so a
parent process or a demo script can wire the gateway to them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from .anthropic import FakeAnthropic
from .base import FakeProvider
from .ollama import FakeOllama
from .openai import FakeOpenAI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hapax.fakes", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--openai-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--anthropic-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ollama-port", type=int, default=0, help="0 picks a free port")
    return parser.parse_args(argv)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _serve(args: argparse.Namespace) -> None:
    # Handlers go in before the URLs are printed: a parent may signal as soon as it reads them.
    stop = _stop_on_signals()
    fakes: list[tuple[str, FakeProvider, int]] = [
        ("openai", FakeOpenAI(), args.openai_port),
        ("anthropic", FakeAnthropic(), args.anthropic_port),
        ("ollama", FakeOllama(), args.ollama_port),
    ]
    started: list[FakeProvider] = []
    try:
        for name, fake, port in fakes:
            await fake.start(args.host, port)
            started.append(fake)
            line = {"provider": name, "base_url": fake.base_url, "api_key": fake.api_key}
            print(json.dumps(line), flush=True)
        await stop.wait()
    finally:
        for fake in started:
            await fake.stop()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_serve(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
