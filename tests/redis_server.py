"""A real Redis for the tests: Debian's redis-server on a free loopback port, nothing saved.

``./dev test`` installs Debian's redis-server package when it can (root, apt-get). Without
it the tests that need Redis are skipped, except in CI, where they fail: a green CI must
mean the Redis store was tested.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MISSING = "redis-server is not installed (Debian: apt-get install redis-server; ./dev test installs it as root)"


def redis_server_binary() -> str:
    """The path of redis-server; skips the test without it, or fails it in CI."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(f"{MISSING}: CI must test the Redis limit store", pytrace=False)
        pytest.skip(MISSING)
    return binary


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        # A log file, not a pipe: a pipe nobody reads would block the server once full.
        self._log = directory / "redis.log"
        self._proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory), "--logfile", str(self._log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_until_it_answers()

    def freeze(self) -> None:
        """Stops the process without closing its sockets: a Redis that accepts and never answers."""
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self.thaw()  # a frozen process would not act on SIGTERM
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def command(self, *words: str) -> bytes:
        """One command in Redis's inline protocol, for the tests' own look at the server."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(" ".join(words).encode() + b"\r\n")
            return sock.recv(65536)

    def _wait_until_it_answers(self) -> None:
        # The deadline only bounds a broken run.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                output = self._log.read_text(errors="replace") if self._log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}:\n{output}")
            try:
                if self.command("PING").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}")


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    try:
        yield server
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
