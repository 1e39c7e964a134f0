"""Logging shared by every Hapax process: JSON lines (the default) or text.

Every record carries the component name; whatever a caller passes in ``extra``
becomes a top-level field (``request_id`` among them, which ties ext_proc's
lines to Envoy's access log), so logs are greppable and machine-readable. The
text format is for people at a terminal: the same fields, on one line.
"""

from __future__ import annotations

import json
import logging
import sys
import time

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


def setup(component: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter(component) if fmt == "text" else JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # watchfiles reports every change in the watched folder at INFO; the control
    # plane logs the ones that matter (the config file) itself.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


def announce(event: str, **fields: object) -> None:
    """One JSON line on stdout: how a child tells the supervisor it is ready."""
    print(json.dumps({"event": event, **fields}), flush=True)
