"""Logging shared by every Hapax process: JSON lines (the default) or text.

Every record carries the component name; whatever a caller passes in ``extra``
becomes a top-level field (``request_id`` among them, which ties ext_proc's
lines to Envoy's access log), so logs are greppable and machine-readable. The
text format is for people at a terminal: the same fields, on one line.

Under load two things kept logs from being read (issue #18): lines from two
writers spliced into each other, and one warning per failed request grew stderr
by hundreds of megabytes. So each record goes out as one whole line in one
``LineWriter`` call, and ``RateLimit`` lets at most ``budget`` records of one
kind (logger, level, message template) through per ``interval``, then says in
one line how many it held back.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


FORMATS = ("json", "text")


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def entry(self, record: logging.LogRecord) -> dict[str, object]:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return entry

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.entry(record), default=str)


class TextFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(record)
        head = f"{entry.pop('ts')} {str(entry.pop('level')).upper():7} {entry.pop('component')}: {entry.pop('msg')}"
        entry.pop("logger")
        exc = entry.pop("exc", None)
        fields = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in entry.items())
        return " ".join(part for part in (head, fields) if part) + (f"\n{exc}" if exc else "")


class LineWriter:
    """Whole lines to one file descriptor: a line is written in full before the next starts.

    A pipe keeps a write whole only up to PIPE_BUF (4 KiB); a longer one that another
    writer's write lands in the middle of is spliced. One writer per descriptor, and
    this lock between the threads of that writer, is what keeps every line whole.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]


STDERR = LineWriter(2)


class LineHandler(logging.Handler):
    """Each record as one line, in one ``LineWriter.write``."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record).encode(errors="replace") + b"\n")
        except Exception:
            self.handleError(record)


@dataclass
class _Window:
    start: float
    seen: int = 0

    def suppressed(self, budget: int) -> int:
        return max(0, self.seen - budget)


class RateLimit(logging.Filter):
    """At most ``budget`` records of one kind per ``interval`` seconds; the rest are counted.

    A kind is the logger, the level and the message template (``record.msg``, before its
    arguments): "provider answered with an error" for every failed request is one kind,
    whatever the request. When a kind's interval is over, the count of what it held back
    goes out as one record, "suppressed K similar messages", and the kind starts afresh.
    Records under ``level`` are never held back (a debug session wants every line).
    """

    def __init__(self, budget: int = 10, interval: float = 60.0, level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.budget, self.interval, self.level, self.clock = budget, interval, level, clock
        self.sink: Callable[[logging.LogRecord], object] | None = None  # where summaries go
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        with self._lock:
            summaries = self._close(lambda window: now - window.start >= self.interval)
            passes = record.levelno < self.level or _is_summary(record)
            if not passes:
                key = (record.name, record.levelno, str(record.msg))
                window = self._windows.setdefault(key, _Window(now))
                window.seen += 1
                passes = window.seen <= self.budget
        self._send(summaries)
        return passes

    def flush(self) -> None:
        """Says what every open interval held back: at exit, so no count is lost."""
        with self._lock:
            summaries = self._close(lambda window: True)
        self._send(summaries)

    def _close(self, due: Callable[[_Window], bool]) -> list[logging.LogRecord]:
        closed = [key for key, window in self._windows.items() if due(window)]
        summaries = [_summary(key, count) for key in closed
                     if (count := self._windows.pop(key).suppressed(self.budget))]
        return summaries

    def _send(self, summaries: list[logging.LogRecord]) -> None:
        for summary in summaries:
            if self.sink is not None:
                self.sink(summary)


def _summary(key: tuple[str, int, str], count: int) -> logging.LogRecord:
    name, level, template = key
    record = logging.LogRecord(name, level, __file__, 0, "suppressed %d similar messages",
                               (count,), None)
    record.suppressed = count
    record.similar_to = template
    return record


def _is_summary(record: logging.LogRecord) -> bool:
    return hasattr(record, "similar_to") and hasattr(record, "suppressed")


def setup(component: str, level: str = "INFO", fmt: str = "json",
          writer: LineWriter = STDERR) -> None:
    handler = LineHandler(writer)
    handler.setFormatter(TextFormatter(component) if fmt == "text" else JsonFormatter(component))
    limit = RateLimit()
    limit.sink = handler.handle
    handler.addFilter(limit)
    atexit.register(limit.flush)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # watchfiles reports every change in the watched folder at INFO; the control
    # plane logs the ones that matter (the config file) itself.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


def announce(event: str, **fields: object) -> None:
    """One JSON line on stdout: how a child tells the supervisor it is ready."""
    print(json.dumps({"event": event, **fields}), flush=True)
