"""A real PostgreSQL for the tests: Debian's server in a throwaway cluster on a free loopback port.

``./dev test`` installs Debian's postgresql package when it can (root, apt-get). Without it the
tests that need PostgreSQL are skipped, except in CI, where they fail. PostgreSQL refuses to run
as root: when the tests do, the cluster belongs to the ``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MISSING = "PostgreSQL is not installed (Debian: apt-get install postgresql; ./dev test installs it as root)"


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        if os.environ.get("CI"):
            pytest.fail(f"{MISSING}: CI must test the PostgreSQL ledger", pytrace=False)
        pytest.skip(MISSING)
    return Path(found[-1]).parent


def _as_owner() -> list[str]:
    """What runs a PostgreSQL command: as the ``postgres`` user when the tests run as root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("the tests run as root and runuser is missing: PostgreSQL refuses to run as root")
    return [runuser, "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        self.bin = _binaries()
        self.directory = Path(tempfile.mkdtemp(prefix="hapax-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.data = self.directory / "data"
        self.port = _free_port()
        self.url = f"postgresql://hapax@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "hapax", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run([*_as_owner(), str(self.bin / program), *args], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            log = self.directory / "log"
            raise RuntimeError(f"{program} failed: {result.stderr}{log.read_text() if log.exists() else ''}")

    def stop(self) -> None:
        subprocess.run([*_as_owner(), str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()
