"""The cost ledger: one record per request, for finance, written off the request path.

Metrics are aggregates that reset and sample; a ledger keeps every request (``ledger:`` in the
config): its time, id, route and labels, client, provider and model, tokens, cost and the
configuration version whose price table priced it, status and outcome (``wire.LEDGER_COLUMNS``).
Records come from where requests are counted: the access log (every answer but a delivered
stream) and the upstream step (a delivered stream, at its end), so each request is written once;
the request id is the table's key, so a record written twice stays one.

Writing never slows a request: a record joins an in-memory batch, and a task writes the batch
in one transaction (in a thread, every ``FLUSH_SECONDS``) to the store (ext_proc/ledger_stores.py:
SQLite files, one a month, that a gateway's workers share; or PostgreSQL, for a fleet). The
batch is bounded: past ``MAX_PENDING`` records waiting, new ones are dropped and counted
(``hapax_ledger_records_total{result="dropped"}``), so a stalled store costs records, never
memory. Records older than the retention are deleted. A worker that stops writes what it holds
first.

`hapax report` (hapax/ledger_report.py) reads the files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import astuple, dataclass

from ext_proc.ledger_stores import LedgerStore, LedgerStoreError, ledger_store
from ext_proc.metrics import GatewayMetrics
from ext_proc.runtime import LedgerSettings
from hapax import wire

log = logging.getLogger("hapax.ext_proc")

FLUSH_SECONDS = 0.5
MAX_PENDING = 100_000
PRUNE_EVERY_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One request, in wire.LEDGER_COLUMNS' order."""

    time: float
    request_id: str
    route: str
    labels: str  # JSON
    key_id: str
    client: str
    provider: str
    model: str
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    cost_usd: float
    price_version: str
    status: int
    outcome: str
    experiment: str = ""
    variant: str = ""
    region: str = ""


def labels_json(labels: Mapping[str, str]) -> str:
    """The labels column: the route's and its client's labels (an experiment's have columns of their own)."""
    return json.dumps({k: v for k, v in labels.items() if k not in wire.EXPERIMENT_LABELS},
                      sort_keys=True, separators=(",", ":"))


class Ledger:
    """This worker's batch of records and the task that writes it to the configured store."""

    def __init__(self, metrics: GatewayMetrics | None = None,
                 open_store: Callable[[LedgerSettings], LedgerStore] = ledger_store) -> None:
        self.metrics = metrics
        self.open_store = open_store
        self.settings: LedgerSettings | None = None
        self.pending: list[LedgerRecord] = []
        self._flusher: asyncio.Task[None] | None = None
        self._store: LedgerStore | None = None
        self._store_settings: LedgerSettings | None = None
        self._pruned = 0.0
        # One write at a time: a store's connections are used by one thread at once.
        self._writing = asyncio.Lock()

    def configure(self, settings: LedgerSettings | None) -> None:
        self.settings = settings

    def record(self, record: LedgerRecord) -> None:
        if self.settings is None:
            return
        if len(self.pending) >= MAX_PENDING:
            self._count("dropped")
            return
        self.pending.append(record)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        """Writes what is pending, off the event loop."""
        async with self._writing:
            settings, batch, self.pending = self.settings, self.pending, []
            if not batch or settings is None:
                return
            try:
                await asyncio.to_thread(self._write, settings, batch)
            except LedgerStoreError:
                log.exception("could not write ledger records; they are lost", extra={"records": len(batch)})
                self._count("failed", len(batch))
                return
            self._count("written", len(batch))

    async def close(self) -> None:
        await self.flush()  # under the lock: after a flush already under way, not beside it
        if self._flusher is not None:
            self._flusher.cancel()
        if self._store is not None:
            self._store.close()
            self._store = None

    def _write(self, settings: LedgerSettings, batch: list[LedgerRecord]) -> None:
        store = self._store_for(settings)
        store.write([astuple(record) for record in batch])
        if time.time() - self._pruned > PRUNE_EVERY_SECONDS:
            self._pruned = time.time()
            store.prune(time.time() - settings.retention_days * 86400)

    def _store_for(self, settings: LedgerSettings) -> LedgerStore:
        if self._store is None or settings != self._store_settings:
            if self._store is not None:
                self._store.close()
            self._store, self._store_settings = self.open_store(settings), settings
        return self._store

    def _count(self, result: str, records: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.ledger_records.labels(result).inc(records)
