"""The supervisor's restart counts, as ext_proc reports them (/metrics, /health).

``hapax serve`` restarts a dead ext_proc worker or control plane and writes
each process's count to ``restarts.json`` in the directory the workers share
(``--shared-dir``); it is not scraped itself, and a restarted worker could not
keep a count of its own restarts. Without a supervisor there is no file and
nothing to report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hapax import wire

log = logging.getLogger("hapax.ext_proc")


class RestartCounts:
    def __init__(self, shared_dir: Path | None) -> None:
        self.path = shared_dir / wire.RESTARTS_FILE if shared_dir else None

    def read(self) -> dict[str, int]:
        """Process name -> restarts; empty when there is no supervisor or its file is unreadable."""
        if self.path is None:
            return {}
        try:
            counts = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            log.warning("cannot read the restart counts", extra={"path": str(self.path), "error": str(err)})
            return {}
        return {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {}
