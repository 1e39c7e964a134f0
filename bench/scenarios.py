"""What a run measures: the scenarios of a full run and of a quick one.

Every scenario is run against A, B and C back to back (A B C, then the next
scenario), so whatever the shared machine does meanwhile hits the three
about equally and cancels out of C/B and C - B.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.payloads import STREAMING

CLOSED = "closed"  # wrk, fixed connections, as fast as the target answers
OPEN = "open"      # the open-loop generator at a fixed rate (a fraction of C's peak)
TIMING = "timing"  # stream timing against the paced fake

# How the request is shaped (bench/payloads.py):
FAST = "fast"  # the fast lanes: the provider's model named, streams ask for usage, no SDK headers
SDK = "sdk"    # what the official OpenAI Python SDK sends: its headers, "stream" always, no stream_options

KIND_NAMES = {"json": "json", "sse": "stream", "paced": "paced stream", "alias": "json via alias",
              "auto": "json model=auto", "anthropic": "json to Anthropic",
              "seed": "json seed config (Anthropic first, model=auto)",
              "keys": "json with client keys", "limits": "json with keys + limits",
              "experiment": "json in an A/B experiment",
              "messages": "Anthropic Messages to Anthropic (its lane)",
              "responses": "OpenAI Responses to OpenAI (its lane)"}


@dataclass(frozen=True)
class Scenario:
    kind: str    # a key of KIND_NAMES: which answer (bench/targets.py KINDS), or which way to it (ALIASED)
    prompt: str  # a key of payloads.PROMPT_SIZES
    load: str    # CLOSED | OPEN | TIMING
    seconds: int
    connections: int = 0
    peak_fraction: float = 0.0  # OPEN: the rate is this fraction of C's peak (same kind, prompt, client)
    client: str = FAST  # FAST | SDK
    round: int = 1  # with --rounds N, the whole plan runs N times in a row (1, 2, ... N)

    @property
    def name(self) -> str:
        what = f"{self.client}: {KIND_NAMES[self.kind]}"
        if self.load == OPEN:
            name = f"{what} {self.prompt} open {self.peak_fraction:g}x C peak"
        else:
            name = f"{what} {self.prompt} c={self.connections}"
        return name if self.round == 1 else f"{name} (round {self.round})"

    @property
    def stream(self) -> bool:
        return self.kind in STREAMING


def in_rounds(plan: list[Scenario], rounds: int) -> list[Scenario]:
    """The plan ``rounds`` times over: round 1 of every scenario, then round 2... (A B C within each)."""
    return [replace(s, round=r) for r in range(1, rounds + 1) for s in plan]


def _closed(kind: str, prompt: str, seconds: int, *levels: int, client: str = FAST) -> list[Scenario]:
    return [Scenario(kind, prompt, CLOSED, seconds, c, client=client) for c in levels]


def _sdk(seconds: int, levels: tuple[int, ...], streams: tuple[int, ...], keyed: bool = False) -> list[Scenario]:
    """Issue #20: requests as the OpenAI SDK sends them, through the lanes clients really take.

    ``keyed``: the passthrough lane again at c=64, right after the plain one, through a Hapax
    with client keys and one with keys + limits (each a gateway of its own, bench/targets.py).
    """
    plan = []
    for kind in ("json", "auto", "anthropic", "seed"):
        plan += _closed(kind, "300B", seconds, *levels, client=SDK)
        if kind == "json" and keyed:  # next to the plain lane's c=64, which they are compared with
            for keyed_kind in ("keys", "limits"):
                plan += _closed(keyed_kind, "300B", seconds, 64, client=SDK)
        if kind == "json":  # Anthropic's lane and the Responses API's beside the chat lane (issue #25)
            plan += _closed("messages", "300B", seconds, 64, client=SDK)
            plan += _closed("responses", "300B", seconds, 64, client=SDK)
        if kind == "auto":  # an experiment's requests take the model lane's path, as auto's do
            plan += _closed("experiment", "300B", seconds, 64, client=SDK)
        if kind == "json":  # its open-loop rate is half the C peak just measured
            plan.append(Scenario("json", "300B", OPEN, seconds + 2, peak_fraction=0.5, client=SDK))
    plan += _closed("sse", "300B", seconds, 16, client=SDK)
    plan += [Scenario("paced", "300B", TIMING, seconds, n, client=SDK) for n in streams]
    return plan


def full_plan() -> list[Scenario]:
    """About 10 minutes of load: the fast lanes of issue #8, then the SDK's requests of issue #20."""
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
        *_sdk(8, (1, 16, 64), (1, 8), keyed=True),
    ]


def quick_plan() -> list[Scenario]:
    """About two minutes of load: one of each kind (but the keyed ones: two more gateways to start)."""
    return [
        *_closed("json", "300B", 4, 1, 64),
        Scenario("json", "300B", OPEN, 5, peak_fraction=0.5),
        *_closed("json", "200KB", 4, 16),
        *_closed("alias", "300B", 4, 16),
        *_closed("sse", "300B", 4, 16),
        Scenario("paced", "300B", TIMING, 4, 1),
        *_sdk(4, (64,), (1, 8)),
    ]
