"""The image's steps, without a container engine: what `docker build` and `docker run` would do.

The Dockerfile's builder stage builds a wheel from the files it copies; its final stage installs
that wheel alone into a fresh virtual environment (no source tree), and runs the entrypoint as
an unprivileged user. This module does the same outside the checkout: the files the Dockerfile
copies, into a temporary directory; ``pip wheel --no-deps`` there; ``python -m venv
--without-pip`` and ``pip --python VENV install WHEEL`` (dependencies from PyPI, through pip's
cache); then ``deploy/docker/entrypoint.sh`` as ``nobody`` (``setpriv``), with HOME pointing
nowhere and a TMPDIR of its own, as in the image. Three ways to run it, as in docs/deployment.md:

- no config file: the built-in demo, whose fake providers answer a chat request;
- a config file where the image looks for one (``HAPAX_CONFIG``, /etc/hapax/hapax.yaml in the
  image): that config is served;
- ``OPENAI_API_KEY`` and no config: the real OpenAI is configured. That gateway runs in a network
  namespace of its own (loopback only), so neither the test nor the gateway's health checks
  reach OpenAI, and it is asked nothing but its banner and ``/health``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from hapax.fakes import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
NOBODY_UID = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("unshare") is None,
    reason="running the image's user (nobody) and a network namespace needs root, setpriv and unshare")


def builder_sources(dockerfile: str) -> list[str]:
    """The paths the Dockerfile's builder stage copies into the build context (COPY SRC... DEST)."""
    builder = dockerfile.split(" AS builder", 1)[1].split("\nFROM ", 1)[0]
    sources: list[str] = []
    for line in builder.splitlines():
        if line.startswith("COPY "):
            words = [word for word in line.split()[1:] if not word.startswith("--")]
            sources += words[:-1]
    return sources


def interpreter_nobody_runs() -> str:
    """A Python 3.11+ the gateway's user can run, as the image's /usr/local/bin/python (this test's
    own may live where only root reads, under /root/.pyenv). Asked through a shell, as the
    entrypoint runs it: setpriv's own exec of such a path succeeds where the user's fails."""
    candidates = [os.path.realpath(sys._base_executable), "/usr/local/bin/python3.11", "/usr/bin/python3.11",
                  "/usr/local/bin/python3", "/usr/bin/python3"]
    check = "import sys, venv; print(sys.version_info >= (3, 11))"
    for candidate in dict.fromkeys(candidates):
        if not Path(candidate).is_file():
            continue
        asked = subprocess.run([*NOBODY, "sh", "-c", '"$0" -c "$1"', candidate, check], cwd="/",
                               capture_output=True, text=True)
        if asked.stdout.strip() == "True":
            return candidate
    pytest.fail(f"no Python 3.11+ that nobody can run among {candidates}")


@dataclass
class Image:
    """The installed image's layout under ``root``: /opt/hapax, the entrypoint, /etc/hapax."""

    root: Path
    venv: Path
    entrypoint: Path
    wheel: Path
    cases: list[Path] = field(default_factory=list)

    def case_dir(self, name: str) -> Path:
        """A TMPDIR the gateway's user owns, alone (the image's /tmp)."""
        path = self.root / "run" / name
        path.mkdir(parents=True)
        os.chown(path, NOBODY_UID, NOBODY_UID)
        path.chmod(0o700)
        return path


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    # Not under pytest's tmp_path: that is root's alone (0700), and nobody must read the install.
    root = Path(tempfile.mkdtemp(prefix="hapax-image-"))
    root.chmod(0o755)
    try:
        src, wheels, venv = root / "src", root / "wheels", root / "opt" / "hapax"
        for source in builder_sources(DOCKERFILE.read_text()):
            target = src / source
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / source, target)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(src)],
                       check=True, timeout=300)
        shutil.rmtree(src)  # the image has no source tree
        (wheel,) = wheels.glob("hapax-*.whl")
        subprocess.run([interpreter_nobody_runs(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--quiet", str(wheel)],
                       check=True, timeout=900)
        entrypoint = root / "usr" / "local" / "bin" / "hapax-entrypoint"
        entrypoint.parent.mkdir(parents=True)
        shutil.copy2(ENTRYPOINT, entrypoint)
        entrypoint.chmod(0o755)
        (root / "etc" / "hapax").mkdir(parents=True)
        yield Image(root=root, venv=venv, entrypoint=entrypoint, wheel=wheel)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Container:
    """The entrypoint running as nobody, with the image's environment and nothing of ours."""

    def __init__(self, image: Image, name: str, *, env: dict[str, str] | None = None,
                 isolated_network: bool = False) -> None:
        self.config = image.root / "etc" / "hapax" / "hapax.yaml"
        environment = {
            "PATH": f"{image.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/nonexistent",
            "TMPDIR": str(image.case_dir(name)),
            "HAPAX_CONFIG": str(self.config),
            "PYTHONDONTWRITEBYTECODE": "1",
            **(env or {}),
        }
        # --port 0: options alone go to `hapax serve` (the entrypoint's rule); 0, so that the
        # test takes no fixed port of the machine.
        command = [*NOBODY, str(image.entrypoint), "--port", "0", "--metrics-port", "0"]
        if isolated_network:
            # A network namespace with only loopback: nothing leaves the machine. unshare execs
            # its command, so the process is still the one Popen started.
            command = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
        self.isolated_network = isolated_network
        self.output: list[str] = []
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=environment, start_new_session=True)
        threading.Thread(target=self._collect_stderr, daemon=True).start()
        self._wait_ready()

    def _collect_stderr(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _wait_ready(self, timeout: float = 120.0) -> None:
        assert self.proc.stdout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("the entrypoint exited before ready:\n" + "".join(self.stderr[-40:]))
            self.output.append(line)
            if line.startswith("Press Ctrl-C"):
                return
        raise AssertionError("the entrypoint was not ready in time:\n" + "".join(self.output))

    def banner(self, label: str) -> str:
        for line in self.output:
            if line.strip().startswith(label):
                return line.split(label, 1)[1].strip()
        raise KeyError(label)

    @property
    def api_url(self) -> str:
        """The loopback URL the banner suggests, for an API bound to every interface."""
        listen = self.banner("OpenAI API:")
        match = re.search(r"e\.g\. (http://\S+?)\)", listen)
        assert match, listen
        return match.group(1)

    def get(self, url: str) -> tuple[int, bytes]:
        """GET ``url`` from inside the gateway's network namespace when it has its own."""
        code = ("import sys, urllib.request, urllib.error\n"
                "try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=10); s, b = r.status, r.read()\n"
                "except urllib.error.HTTPError as e:\n    s, b = e.code, e.read()\n"
                "sys.stdout.write(str(s) + '\\n' + b.decode())\n")
        prefix = ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net"] if self.isolated_network else []
        result = subprocess.run([*prefix, sys.executable, "-c", code, url], capture_output=True, text=True,
                                timeout=30, check=True)
        status, _, body = result.stdout.partition("\n")
        return int(status), body.encode()

    def uids(self) -> set[int]:
        """The real uid of every process of the gateway: the entrypoint's and its descendants'."""
        tree, changed = {self.proc.pid}, True
        while changed:
            changed = False
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
                    if ppid in tree and pid not in tree:
                        tree.add(pid)
                        changed = True
        uids = set()
        for pid in tree:
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                uids.add(int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1)))
        return uids

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(image: Image, name: str, **kwargs) -> Iterator[Container]:
    container = Container(image, name, **kwargs)
    try:
        yield container
    finally:
        container.stop()


def chat(url: str, model: str = "auto") -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/chat/completions", method="POST", headers={"content-type": "application/json"},
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_the_wheel_holds_the_gateway_and_envoy_s_bootstrap_and_no_tests(image):
    import zipfile

    names = zipfile.ZipFile(image.wheel).namelist()

    assert "hapax/cli.py" in names and "control_plane/server.py" in names and "ext_proc/server.py" in names
    assert any(name.endswith("data/share/hapax/envoy/bootstrap.yaml") for name in names)
    assert not [name for name in names if name.startswith(("tests/", "bench/", "docs/"))]


def test_without_a_config_the_image_serves_the_built_in_demo_on_every_interface_as_nobody(image):
    with running(image, "demo") as container:
        status, answer = chat(container.api_url)
        health, _ = container.get(container.api_url.removesuffix("/v1") + "/health")

        assert status == 200 and answer["choices"][0]["message"]["content"]
        assert health == 200
        assert container.banner("Config:").startswith("built-in default")
        assert container.banner("OpenAI API:").startswith("http://0.0.0.0:")  # reachable from outside a container
        assert set(container.banner("Preference:").split(" > ")) == {"openai", "anthropic", "ollama"}
        assert container.uids() == {NOBODY_UID}
    assert "serving the built-in configuration" in "".join(container.stderr)
    assert container.proc.returncode == 0


def test_a_config_file_where_the_image_looks_for_one_is_served(image, fake_host):
    with fake_host.serving(FakeOpenAI(api_key="sk-mounted-provider", model="mounted-model")) as (fake,):
        config = {"server": {"host": "0.0.0.0", "port": 8080},
                  "providers": {"mounted": {"type": "openai", "model": "mounted-model", "base_url": fake.base_url,
                                            "api_key": "${MOUNTED_KEY}"}}}
        path = image.root / "etc" / "hapax" / "hapax.yaml"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o644)  # root's file, readable by the gateway, as a mounted one is
        try:
            with running(image, "mounted", env={"MOUNTED_KEY": "sk-mounted-provider"}) as container:
                status, answer = chat(container.api_url, model="mounted-model")

                assert status == 200 and answer["model"] == "mounted-model"
                assert fake.requests and fake.requests[-1].headers["authorization"] == "Bearer sk-mounted-provider"
                assert container.banner("Config:").startswith(f"{path} (version ")
                assert container.banner("Providers:").startswith("mounted (openai, ")
                assert container.uids() == {NOBODY_UID}
        finally:
            path.unlink()
    assert "sk-mounted-provider" not in "".join(container.output + container.stderr)


def test_with_an_openai_key_and_no_config_the_image_serves_the_real_openai(image):
    key = "sk-test-not-a-real-key-0000"
    with running(image, "openai", env={"OPENAI_API_KEY": key}, isolated_network=True) as container:
        _, body = container.get(container.api_url.removesuffix("/v1") + "/health")
        health = json.loads(body)

        assert container.banner("Config:").startswith("built-in default")
        assert container.banner("Providers:") == "openai (openai, https://api.openai.com/v1)"
        assert container.banner("Preference:") == "openai"
        assert set(health["providers"]) == {"openai"}
        assert container.uids() == {NOBODY_UID}
    assert key not in "".join(container.output + container.stderr)
    assert container.proc.returncode == 0
