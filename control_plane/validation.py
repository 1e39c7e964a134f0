"""Envoy's own check of a candidate version, off the control plane's event loop and bounded in time.

``envoy --mode validate`` of a static copy of the snapshot (control_plane/static_bootstrap.py)
catches what only Envoy knows (a body over its size cap, a regular expression RE2 refuses).
It costs seconds, and more as the configuration grows (16 s at 100 providers, minutes at
100 providers and 1,000 routes: issue 21), while the same event loop serves xDS to every
Envoy and ext_proc. So it runs as an asyncio subprocess, its bootstrap is rendered in a
thread, and it has a time bound: past it, Envoy is stopped and the version is served without
its check (``NotChecked``), guarded by what holds for every version anyway: the rollout is
make before break, and a client that refuses a version (a NACK) keeps its last good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

from control_plane.snapshot import Snapshot
from control_plane.static_bootstrap import rejection_of, validate_command, write_bootstrap

# Seconds Envoy's validation may take before a version is served without it (--validation-timeout).
VALIDATION_TIMEOUT = 30.0


class NotChecked(Exception):
    """Envoy's validation did not finish (too slow, or Envoy could not be run): the message says which."""


async def envoy_rejection(envoy: Path, snapshot: Snapshot, source: str, timeout: float,
                          stats_tags: Sequence[dict[str, str]] = ()) -> str:
    """Why Envoy refuses ``snapshot``, or "" if it accepts it; NotChecked if it cannot tell in ``timeout`` s."""
    with tempfile.TemporaryDirectory() as tmp:
        # Serialising a large snapshot is itself work the loop should not wait on.
        bootstrap = await asyncio.to_thread(write_bootstrap, snapshot, Path(tmp), stats_tags)
        try:
            process = await asyncio.create_subprocess_exec(
                *validate_command(envoy, bootstrap), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as err:
            raise NotChecked(f"Envoy could not be run to validate {source} ({envoy}: {err}); the configuration "
                             "is served without Envoy's check") from err
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            raise NotChecked(f"Envoy's validation of {source} took longer than {timeout:g} s; the configuration "
                             "is served without it, guarded by the make-before-break rollout and NACK "
                             "handling (raise --validation-timeout to wait for it)") from None
        finally:
            await _end(process)  # timed out, or the control plane stops while Envoy validates
    assert process.returncode is not None
    return rejection_of(process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


async def _end(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
