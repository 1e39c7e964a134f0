"""What a result depends on besides the code: the machine, its load, the versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.wrk import wrk_version


@dataclass(frozen=True)
class MachineInfo:
    cpu_model: str
    cpu_count: int
    kernel: str
    load_before: str  # /proc/loadavg when the run started: the machine is shared
    python: str
    envoy: str
    wrk: str
    hapax: str  # git commit, and whether the working tree differs from it


def _cpuinfo() -> tuple[str, int]:
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    return (models[0] if models else platform.processor() or "unknown"), len(models) or (os.cpu_count() or 0)


def _envoy_version(envoy: Path) -> str:
    out = subprocess.run([str(envoy), "--version"], capture_output=True, text=True, check=False).stdout
    # "... version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    parts = out.split("version:", 1)[-1].strip().split("/")
    return f"{parts[1]} ({parts[0][:12]}, {'/'.join(parts[2:])})" if len(parts) > 2 else out.strip()


def _git(repo: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [ln for ln in git("status", "--porcelain", "--untracked-files=no").splitlines() if ln]
    return f"{commit} + uncommitted changes to {len(changed)} file(s)" if changed else commit


def machine_info(envoy: Path, repo: Path) -> MachineInfo:
    model, count = _cpuinfo()
    return MachineInfo(
        cpu_model=model, cpu_count=count, kernel=platform.release(),
        load_before=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
        python=sys.version.split()[0], envoy=_envoy_version(envoy), wrk=wrk_version(), hapax=_git(repo),
    )
