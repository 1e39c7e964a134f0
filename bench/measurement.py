"""One measurement: a scenario against one target, and what the processes did meanwhile."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.procstat import Memory
from bench.scenarios import Scenario


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (as wrk reports them); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def role_of(name: str) -> str:
    """A process's role from its name: ``ext_proc#2`` and ``ext_proc (seed)`` are ext_proc."""
    return name.split(" (", 1)[0].split("#", 1)[0]


@dataclass
class Measurement:
    scenario: Scenario
    target: str  # A, B or C
    requests: int  # completed (streams, for stream scenarios)
    seconds: float
    p50_ms: float  # latency; time to first byte for stream timing
    p90_ms: float
    p99_ms: float
    status_errors: int = 0
    socket_errors: int = 0
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process name -> CPU used during the run
    memory: dict[str, Memory] = field(default_factory=dict)  # process name -> after the run
    extra: dict[str, float] = field(default_factory=dict)  # stream gaps, open-loop rate and send lag
    command: str = ""

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    def cpu_per_1k(self, role: str) -> float:
        """CPU seconds per 1,000 requests of every process of one role (ext_proc, ext_proc#2, ...)."""
        used = sum(v for k, v in self.cpu_seconds.items() if role_of(k) == role)
        return used / self.requests * 1000 if self.requests else math.nan
