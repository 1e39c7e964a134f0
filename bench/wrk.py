"""Closed-loop load with wrk: a fixed number of connections, each sending as soon as it has its answer.

wrk (C, epoll, one thread here) is the standard tool for this and costs far
less CPU per request than any Python client, which matters on a 2-core machine
where the generator competes with what it measures. A Lua script sets the POST
body and prints wrk's summary as one JSON line (latency percentiles in µs,
socket errors, and responses with a status >= 400, which wrk counts as errors).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MARKER = "BENCH_RESULT "
TIMEOUT = "10s"  # a 200 KB request through Hapax at c=64 takes well under this

_SCRIPT = """-- Written by bench/wrk.py.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(headers)slocal f = assert(io.open(%(body_path)s, "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%.1f,"p90_us":%%.1f,"p99_us":%%.1f,"max_us":%%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    socket_errors: int  # connect, read, write, timeout
    status_errors: int  # responses with status >= 400
    command: str

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise WrkError("wrk is not installed (Debian: apt-get install wrk; ./dev bench installs it as root)")
    return found


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def write_script(body: bytes, name: str, workdir: Path, headers: dict[str, str] | None = None) -> Path:
    body_path = workdir / f"{name}.body"
    body_path.write_bytes(body)
    script = workdir / f"{name}.lua"
    # JSON strings are valid Lua strings for these (ASCII) names and values.
    # Content-Type is the script's already (a second one, in another case, would be a second header).
    lines = "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in (headers or {}).items()
                    if k.lower() != "content-type")
    script.write_text(_SCRIPT % {"body_path": json.dumps(str(body_path)), "marker": MARKER, "headers": lines})
    return script


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> WrkResult:
    # One thread: wrk then uses a fraction of one core, leaving the rest to the
    # target; it still drives 64 connections through epoll without being the limit.
    argv = [wrk_binary(), "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", TIMEOUT,
            "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARKER)), None)
    if out.returncode != 0 or line is None:
        raise WrkError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    s = json.loads(line[len(MARKER):])
    return WrkResult(
        requests=s["requests"], seconds=s["duration_us"] / 1e6,
        p50_ms=s["p50_us"] / 1000, p90_ms=s["p90_us"] / 1000, p99_ms=s["p99_us"] / 1000,
        socket_errors=s["connect"] + s["read"] + s["write"] + s["timeout"], status_errors=s["status"],
        command=shlex.join(argv),
    )
