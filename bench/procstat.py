"""What /proc says about a process: CPU seconds, memory, children, command line.

Linux only, read straight from /proc so the harness adds no dependency and no
sampling thread: a reading is a few file reads, taken between load runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    rss_kb: int  # VmRSS: resident now
    hwm_kb: int  # VmHWM: the peak resident size since the process started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its own, not its children's)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def memory(pid: int) -> Memory:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])  # always in kB
    return Memory(rss_kb=values.get("VmRSS", 0), hwm_kb=values.get("VmHWM", 0))


def cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def children(pid: int) -> list[int]:
    """Direct children: ``pgrep -P pid``, or the same read from /proc without procps."""
    if shutil.which("pgrep"):
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
        return sorted(int(p) for p in out.stdout.split())
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone while we looked
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:  # field 4: ppid
            found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    for child in children(pid):
        out.append(child)
        out += descendants(child)
    return out


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent not idle, all CPUs together (the "cpu" line of /proc/stat).

    On a shared machine this tells how much of it the processes we watch did not use.
    """
    return _busy(Path("/proc/stat").read_text().split("\n", 1)[0])


def core_busy_seconds(cores: tuple[int, ...]) -> float:
    """CPU time some CPUs have spent not idle (their "cpuN" lines of /proc/stat), added up.

    With pinning this says whether the measured core was full and whether the
    load generator's cores were (then the generator, not the target, set the pace).
    """
    wanted = {f"cpu{n}" for n in cores}
    return sum(_busy(line) for line in Path("/proc/stat").read_text().splitlines() if line.split(" ", 1)[0] in wanted)


def _busy(line: str) -> float:
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in line.split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each named process; one that has gone is left out."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            out[name] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out
