"""Target P: Portkey's open-source gateway (``@portkey-ai/gateway``, Node), on the same core as Hapax.

Only for the Anthropic scenario: the same OpenAI-shaped request, which Portkey
translates to Anthropic's Messages API and back, like Hapax. It is told the
provider by headers (its README: ``x-portkey-provider``, ``x-portkey-custom-host``),
pointed at the same fake Anthropic answer as Hapax, and takes the client's
bearer token as the Anthropic key. Installed outside the repository
(docs/benchmarks.md: ``npm install @portkey-ai/gateway@1.15.2`` in a directory
given as ``--portkey DIR``); never part of it.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
from pathlib import Path

from bench.payloads import MODELS, chat_request
from bench.pinning import CorePlan
from bench.processes import ProcessSet, StartError, wait_until
from bench.targets import CHAT_PATH, Endpoint, Fakes, Target, post_ok

ENTRY = Path("node_modules/@portkey-ai/gateway/build/start-server.js")


def _free_port() -> int:
    # Portkey takes --port=N and cannot report a port it picked itself.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def portkey_version(directory: Path) -> str:
    package = directory / ENTRY.parent.parent / "package.json"
    return str(json.loads(package.read_text()).get("version", "?"))


def start_portkey(procs: ProcessSet, workdir: Path, directory: Path, fakes: Fakes,
                  plan: CorePlan | None) -> Target:
    script = directory / ENTRY
    node = shutil.which("node")
    if not script.exists() or node is None:
        raise StartError(f"Portkey: no {script} (npm install @portkey-ai/gateway@1.15.2 in {directory}) or no node")
    port = _free_port()
    pinned = plan.taskset() if plan else []
    proc = procs.start("portkey", [*pinned, node, str(script), f"--port={port}", "--headless"], workdir,
                       cwd=directory)
    headers = {"x-portkey-provider": "anthropic",
               "x-portkey-custom-host": f"http://127.0.0.1:{fakes.envoy_port}/anthropic/v1"}
    target = Target("P", f"Portkey gateway {portkey_version(directory)} (Node)",
                    {"anthropic": Endpoint(port, CHAT_PATH)}, root=proc, fixed_pids=fakes.pids, headers=headers)
    # Portkey needs the Anthropic key; the SDK's bearer token is it (Hapax uses its own).
    body = chat_request(300, model=MODELS["anthropic"], stream=False)
    probe = functools.partial(post_ok, target.endpoints["anthropic"].url, body,
                              {**headers, "authorization": "Bearer sk-bench"})
    wait_until(probe, "no 200 for an Anthropic request", proc, timeout=60)
    return target
