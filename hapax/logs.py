"""Structured (JSON lines) logging shared by every Hapax process.

Every record carries the component name; whatever a caller passes in ``extra``
becomes a top-level field, so logs are greppable and machine-readable.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry = {
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
        return json.dumps(entry, default=str)


def setup(component: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # watchfiles reports every change in the watched folder at INFO; the control
    # plane logs the ones that matter (the config file) itself.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


def announce(event: str, **fields: object) -> None:
    """One JSON line on stdout: how a child tells the supervisor it is ready."""
    print(json.dumps({"event": event, **fields}), flush=True)
