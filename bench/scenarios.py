"""What a run measures: the scenarios of a full run and of a quick one.

Every scenario is run against A, B and C back to back (A B C, then the next
scenario), so whatever the shared machine does meanwhile hits the three
about equally and cancels out of C/B and C - B.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.payloads import STREAMING

CLOSED = "closed"  # wrk, fixed connections, as fast as the target answers
OPEN = "open"      # the open-loop generator at a fixed rate (a fraction of C's peak)
TIMING = "timing"  # stream timing against the paced fake


@dataclass(frozen=True)
class Scenario:
    kind: str    # json | sse | paced: which answer (bench/targets.py KINDS); alias: json, by an alias
    prompt: str  # a key of payloads.PROMPT_SIZES
    load: str    # CLOSED | OPEN | TIMING
    seconds: int
    connections: int = 0
    peak_fraction: float = 0.0  # OPEN: the rate is this fraction of C's peak (json, same prompt)

    @property
    def name(self) -> str:
        what = {"json": "json", "sse": "stream", "paced": "paced stream", "alias": "json via alias"}[self.kind]
        if self.load == OPEN:
            return f"{what} {self.prompt} open {self.peak_fraction:g}x C peak"
        return f"{what} {self.prompt} c={self.connections}"

    @property
    def stream(self) -> bool:
        return self.kind in STREAMING


def _closed(kind: str, prompt: str, seconds: int, *levels: int) -> list[Scenario]:
    return [Scenario(kind, prompt, CLOSED, seconds, c) for c in levels]


def full_plan() -> list[Scenario]:
    """About 6 minutes of load (12 closed-loop scenarios x 3 targets x 8 s, plus the rest)."""
    return [
        *_closed("json", "300B", 8, 1, 16, 64),
        # Right after the 300B runs: its rate is half the C peak just measured.
        Scenario("json", "300B", OPEN, 10, peak_fraction=0.5),
        # The open-loop generator needs far more CPU per request than wrk, so at half
        # of C's (wrk-measured) peak this 2-core machine is nearly busy: a lighter load too.
        Scenario("json", "300B", OPEN, 10, peak_fraction=0.25),
        *_closed("json", "10KB", 8, 1, 16, 64),
        *_closed("json", "200KB", 8, 1, 16, 64),
        # Through ext_proc's upstream step (the model lane): what Anthropic and Ollama requests cost too.
        *_closed("alias", "300B", 8, 1, 16),
        *_closed("sse", "300B", 8, 1, 16, 64),
        Scenario("paced", "300B", TIMING, 6, 1),
        Scenario("paced", "300B", TIMING, 6, 16),
    ]


def quick_plan() -> list[Scenario]:
    """About a minute of load: one of each kind."""
    return [
        *_closed("json", "300B", 4, 1, 64),
        Scenario("json", "300B", OPEN, 5, peak_fraction=0.5),
        *_closed("json", "200KB", 4, 16),
        *_closed("alias", "300B", 4, 16),
        *_closed("sse", "300B", 4, 16),
        Scenario("paced", "300B", TIMING, 4, 1),
    ]
