"""The supervisor's side of its children's output: whole lines, relayed one at a time.

Every child writes its logs into a pipe of its own, and the supervisor is the one
writer of the gateway's stderr. Before, the children shared the supervisor's
stderr, and Envoy wrote two streams into it: its own log, and its access log,
which it buffers (up to 64 KiB or a second) and writes in its buffer's slices,
whose ends fall anywhere in a line. Any line written between two slices, by
Envoy's own log or another process, landed inside an access-log line.

With ``logging.format: json`` a line a child wrote that is not one JSON object
(a crash's traceback, a line cut at ``MAX_LINE``) is relayed as the ``msg`` of
one, so that every line on the gateway's stderr parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from hapax.logs import LineWriter

# Longer lines are cut here: a line that never ends must not hold the supervisor's memory.
MAX_LINE = 64 * 1024
CHUNK = 64 * 1024


class Lines:
    """Splits a byte stream into whole lines, however its chunks fall."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._pending = bytearray()
        self._cutting = False  # the rest of an overlong line, dropped up to its end

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes, without their newlines."""
        self._pending += chunk
        lines: list[bytes] = []
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[:end])
            del self._pending[:end + 1]
            if not self._cutting:
                lines.append(line[:self.max_line])
            self._cutting = False
        if len(self._pending) > self.max_line:
            if not self._cutting:
                lines.append(bytes(self._pending[:self.max_line]))
            self._cutting = True
            self._pending.clear()
        return lines

    def end(self) -> list[bytes]:
        """What is left when the stream ends without a last newline."""
        rest, cutting = bytes(self._pending), self._cutting
        self._pending.clear()
        return [rest] if rest and not cutting else []


def as_json_line(line: bytes, component: str) -> bytes:
    """``line`` if it is one JSON object; otherwise a JSON object that carries it."""
    try:
        if isinstance(json.loads(line), dict):
            return line.strip() + b"\n"
    except ValueError:
        pass
    now = time.time()
    entry = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
        "level": "warning",
        "component": component,
        "logger": "output",  # what the process wrote itself, not through its logger
        "msg": line.decode(errors="replace").rstrip(),
    }
    return json.dumps(entry).encode() + b"\n"


async def relay(stream: asyncio.StreamReader, writer: LineWriter, component: str, json_lines: bool) -> None:
    """Copies ``stream`` to ``writer`` a whole line at a time until the stream ends."""
    lines = Lines()
    while chunk := await stream.read(CHUNK):
        _write(writer, lines.feed(chunk), component, json_lines)
    _write(writer, lines.end(), component, json_lines)


def _write(writer: LineWriter, lines: list[bytes], component: str, json_lines: bool) -> None:
    out = [as_json_line(line, component) if json_lines else line + b"\n" for line in lines if line.strip()]
    if not out:
        return
    # The gateway's stderr may be gone (a closed terminal): the lines are dropped, and the
    # pipe is still read, or the child would block on its next line.
    with contextlib.suppress(OSError):
        # Whole lines only, so several in one write keep every line whole too.
        writer.write(b"".join(out))
