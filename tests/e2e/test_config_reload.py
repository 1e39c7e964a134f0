"""The control plane follows the file: valid edits take effect, invalid ones change nothing.

However the file is saved (in place, by rename, deleted and written anew, ten
times in a row) the gateway ends up serving what the file says last, and
`kill -HUP` makes it read the file again. The last test is the issue's proof:
twenty edits while clients keep calling, and not one call fails.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace

import openai
import pytest
import yaml

from hapax.fakes import FakeAnthropic, FakeOpenAI
from hapax.fakes.base import RequestError
from tests.conftest import gateway_config, wait_for

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


def post(url: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def health(gateway) -> dict:
    with urllib.request.urlopen(gateway.url + "/health", timeout=10) as resp:
        return json.load(resp)


def version(gateway) -> str:
    return health(gateway)["components"]["control_plane"]["config_version"]


def save_by_rename(path, text: str) -> None:
    tmp = path.with_suffix(".swp")
    tmp.write_text(text)
    os.replace(tmp, path)  # how vim and most editors save


def save_in_place(path, text: str) -> None:
    path.write_text(text)  # truncate, then write: how `>` and some editors save


def reloads(gateway, result: str) -> float:
    return gateway.metric("hapax_config_reloads_total", result=result)


@pytest.fixture(scope="module")
def fake(fake_host):
    fake = fake_host.start(FakeOpenAI(api_key="k", model="gpt-4o-mini"))
    yield fake
    fake_host.run(fake.stop())


def chat_config(fake, *paths: str) -> dict:
    routes = [{"path": "/v1/chat/completions", "handler": "chat"}]
    routes += [{"path": p, "handler": "chat"} for p in paths]
    return gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                      "base_url": fake.base_url}}, routes=routes)


def test_valid_edit_is_served_and_invalid_edit_keeps_the_last_good_version(fake, start_gateway):
    config = gateway_config({"openai": {"type": "openai", "model": "gpt-4o-mini", "api_key": "k",
                                        "base_url": fake.base_url}},
                            routes=[{"path": "/v1/chat/completions", "handler": "chat"}])
    gateway = start_gateway(config)
    chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    assert post(gateway.url + "/v1/sales/chat", chat) == 404
    first_version = health(gateway)["components"]["control_plane"]["config_version"]

    config["routes"].append({"path": "/v1/sales/chat", "handler": "chat", "metrics_labels": {"department": "sales"}})
    save_by_rename(gateway.config_path, yaml.safe_dump(config))
    wait_for(lambda: post(gateway.url + "/v1/sales/chat", chat) == 200, "the new route")
    # The routes are served before the rollout's last stage: the version follows it.
    wait_for(lambda: version(gateway) != first_version, "the new version to be rolled out")
    second_version = version(gateway)

    broken = dict(config, providers={"openai": {"type": "opnai", "model": "gpt-4o-mini"}})
    save_by_rename(gateway.config_path, yaml.safe_dump(broken))
    wait_for(lambda: any("config rejected" in line for line in gateway.stderr), "the rejection to be logged")
    rejection = next(line for line in gateway.stderr if "config rejected" in line)
    assert "providers.openai.type: unknown provider type 'opnai'" in rejection
    assert post(gateway.url + "/v1/sales/chat", chat) == 200
    assert post(gateway.url + "/v1/chat/completions", chat) == 200
    assert health(gateway)["components"]["control_plane"]["config_version"] == second_version


def test_a_deleted_file_keeps_serving_and_its_recreation_takes_effect(fake, start_gateway):
    gateway = start_gateway(chat_config(fake, "/v1/a/chat"))
    try:
        served = version(gateway)
        gateway.config_path.unlink()
        wait_for(lambda: any("config file is gone" in line for line in gateway.stderr), "the deletion to be logged")
        assert post(gateway.url + "/v1/a/chat", CHAT) == 200  # the last good version keeps serving
        assert version(gateway) == served and reloads(gateway, "invalid") == 0

        save_in_place(gateway.config_path, yaml.safe_dump(chat_config(fake, "/v1/b/chat")))
        wait_for(lambda: post(gateway.url + "/v1/b/chat", CHAT) == 200, "the re-created file's route")
        assert post(gateway.url + "/v1/a/chat", CHAT) == 404

        # An editor that deletes the file and writes a new one at once.
        gateway.config_path.unlink()
        save_in_place(gateway.config_path, yaml.safe_dump(chat_config(fake, "/v1/c/chat")))
        wait_for(lambda: post(gateway.url + "/v1/c/chat", CHAT) == 200, "the new file's route")
        assert post(gateway.url + "/v1/b/chat", CHAT) == 404
        assert reloads(gateway, "invalid") == 0
    finally:
        gateway.stop()


def test_the_last_of_a_burst_of_writes_wins(fake, start_gateway):
    gateway = start_gateway(chat_config(fake))
    try:
        for i in range(10):  # as fast as Python writes, alternating the two ways editors save
            save = save_by_rename if i % 2 == 0 else save_in_place
            save(gateway.config_path, yaml.safe_dump(chat_config(fake, f"/v1/burst{i}/chat")))
        wait_for(lambda: post(gateway.url + "/v1/burst9/chat", CHAT) == 200, "the last write's route")
        assert [post(gateway.url + f"/v1/burst{i}/chat", CHAT) for i in range(9)] == [404] * 9
        assert post(gateway.url + "/v1/chat/completions", CHAT) == 200
        # Nothing was refused: no file was read half-written (truncated, not yet written).
        assert reloads(gateway, "invalid") == 0
    finally:
        gateway.stop()


def test_sighup_reads_the_file_again_and_the_gateway_keeps_serving(fake, start_gateway):
    gateway = start_gateway(chat_config(fake))
    try:
        children = sorted(gateway.child_pids())
        served = version(gateway)

        # No edit at all, so no file event: only the signal can make the control plane read it.
        os.kill(gateway.proc.pid, signal.SIGHUP)
        wait_for(lambda: reloads(gateway, "unchanged") == 1, "the SIGHUP to re-read the unchanged file")
        assert version(gateway) == served

        save_by_rename(gateway.config_path, yaml.safe_dump(chat_config(fake, "/v1/hup/chat")))
        os.kill(gateway.proc.pid, signal.SIGHUP)
        wait_for(lambda: post(gateway.url + "/v1/hup/chat", CHAT) == 200, "the edit read on SIGHUP")
        os.kill(gateway.proc.pid, signal.SIGHUP)
        wait_for(lambda: reloads(gateway, "unchanged") == 2, "the second SIGHUP")

        # Nothing died or restarted: the same processes serve on.
        assert gateway.proc.poll() is None
        assert sorted(gateway.child_pids()) == children
        assert post(gateway.url + "/v1/chat/completions", CHAT) == 200
        assert reloads(gateway, "invalid") == 0
        assert gateway.stop() == 0  # and it still stops cleanly
    finally:
        gateway.stop()


# ------------------------------------------------------------------ reload under load


class KeyRing:
    """A fake's accepted keys, as a real provider has during a rotation: old and new both work."""

    key_header = ""
    keys: set[str]

    def presented_key(self, headers) -> str:
        value = headers.get(self.key_header, "")
        return value.partition(" ")[2].strip() if self.key_header == "authorization" else value

    def check_credentials(self, request) -> None:
        if self.presented_key(request.headers) not in self.keys:
            raise RequestError(401, "Incorrect API key provided", error_type="authentication_error",
                               code="invalid_api_key")
        super().check_credentials(request)  # whatever else the provider checks

    def rotate(self, new: str) -> None:
        self.keys = self.keys | {new}

    def revoke_all_but(self, key: str) -> None:
        self.keys = {key}


class RotatingOpenAI(KeyRing, FakeOpenAI):
    key_header = "authorization"

    def __init__(self, key: str, **kwargs) -> None:
        super().__init__(api_key=None, **kwargs)  # the key ring checks the key
        self.keys = {key}


class RotatingAnthropic(KeyRing, FakeAnthropic):
    key_header = "x-api-key"

    def __init__(self, key: str, **kwargs) -> None:
        super().__init__(api_key=None, **kwargs)
        self.keys = {key}


OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku-latest"
EXTRA_MODEL = "extra-model"


@dataclass(frozen=True)
class Served:
    """What the file says; each change of the test is one field changed."""

    first: str = "openai"  # provider_preference: openai/anthropic in this order or the other
    extra: bool = False  # a third provider
    teams: tuple[int, ...] = ()  # department routes /v1/team{i}/chat/completions
    openai_key: str = "ko-1"
    anthropic_key: str = "ka-1"

    def config(self, fakes: dict) -> dict:
        providers = {
            "openai": {"type": "openai", "model": OPENAI_MODEL, "api_key": self.openai_key,
                       "base_url": fakes["openai"].base_url},
            "anthropic": {"type": "anthropic", "model": ANTHROPIC_MODEL, "api_key": self.anthropic_key,
                          "base_url": fakes["anthropic"].base_url},
        }
        preference = ["openai", "anthropic"] if self.first == "openai" else ["anthropic", "openai"]
        if self.extra:
            providers["extra"] = {"type": "openai", "model": EXTRA_MODEL, "api_key": "ke",
                                  "base_url": fakes["extra"].base_url}
            preference.append("extra")
        routes = [{"path": "/v1/chat/completions", "handler": "chat", "metrics_labels": {"department": "all"}},
                  {"path": "/v1/models", "handler": "models"}]
        routes += [{"path": f"/v1/team{i}/chat/completions", "handler": "chat",
                    "metrics_labels": {"department": f"team{i}"}} for i in self.teams]
        return gateway_config(providers, preference=preference, routes=routes)


@dataclass
class Load:
    """Clients that keep calling the routes every version serves, and what went wrong for them."""

    base_url: str
    threads: int = 4
    failures: list[str] = field(default_factory=list)
    done: list[int] = field(default_factory=list)  # calls completed, per thread
    stop: threading.Event = field(default_factory=threading.Event)
    workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.done = [0] * self.threads
        self.workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for worker in self.workers:
            worker.start()

    def _run(self, index: int) -> None:
        client = openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=30)
        while not self.stop.is_set():
            stream = self.done[index] % 2 == 1
            try:
                text, finish = self._call(client, stream)
                if not text.startswith("Hello from fake-") or finish != "stop":
                    self.failures.append(f"thread {index} {'stream' if stream else 'json'}: "
                                         f"bad answer {text!r} (finish_reason {finish!r})")
            except Exception as err:  # noqa: BLE001 - every failure counts, whatever its kind
                self.failures.append(f"thread {index} {'stream' if stream else 'json'}: {type(err).__name__}: {err}")
            self.done[index] += 1

    @staticmethod
    def _call(client: openai.OpenAI, stream: bool) -> tuple[str, str | None]:
        messages = [{"role": "user", "content": "under load"}]
        if not stream:
            reply = client.chat.completions.create(model="auto", messages=messages)
            return reply.choices[0].message.content or "", reply.choices[0].finish_reason
        text, finish = "", None
        for chunk in client.chat.completions.create(model="auto", messages=messages, stream=True):
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        return text, finish

    def wait_for_fresh_calls(self) -> None:
        """Until every client has finished a call it started after now: none is left from before."""
        marks = list(self.done)
        wait_for(lambda: all(d >= m + 2 for d, m in zip(self.done, marks, strict=True)),
                 "every client to finish a new call")

    def finish(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout=60)


class Observer:
    """One more client, that checks each change as the clients see it."""

    def __init__(self, gateway, fakes: dict, failures: list[str]) -> None:
        self.gateway = gateway
        self.fakes = fakes
        self.failures = failures
        self.client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)

    def _guard(self, what: str, call):
        try:
            return call()
        except openai.NotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - any other answer is a failed request
            self.failures.append(f"observer ({what}): {type(err).__name__}: {err}")
            return None

    def answered_by(self, label: str) -> bool:
        reply = self._guard("auto", lambda: self.client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "who?"}]))
        return reply is not None and (reply.choices[0].message.content or "").startswith(f"Hello from {label}!")

    def team_route(self, i: int) -> bool:
        """True when the department route answers, False when it is not there (404)."""
        client = self.client.with_options(base_url=f"{self.gateway.base_url}/team{i}")
        try:
            reply = self._guard(f"team{i}", lambda: client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "team?"}]))
        except openai.NotFoundError:
            return False
        return reply is not None

    def models(self) -> set[str]:
        listed = self._guard("models", lambda: self.client.models.list())
        return {m.id for m in listed.data} if listed is not None else set()

    def extra_serves(self) -> bool:
        if EXTRA_MODEL not in self.models():
            return False
        reply = self._guard("extra", lambda: self.client.chat.completions.create(
            model=EXTRA_MODEL, messages=[{"role": "user", "content": "extra?"}]))
        return reply is not None and reply.model == EXTRA_MODEL

    def key_used(self, provider: str, model: str, key: str) -> bool:
        fake = self.fakes[provider]
        seen = len(fake.requests)
        self._guard(f"{provider} key", lambda: self.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "key?"}]))
        return any(r.method == "POST" and fake.presented_key(r.headers) == key for r in list(fake.requests)[seen:])


@pytest.fixture()
def load_fakes(fake_host):
    # A short pause between chunks keeps streams in flight while versions change under them.
    fakes = {
        "openai": RotatingOpenAI("ko-1", model=OPENAI_MODEL, chunk_delay=0.01),
        "anthropic": RotatingAnthropic("ka-1", model=ANTHROPIC_MODEL, chunk_delay=0.01),
        "extra": FakeOpenAI(api_key="ke", model=EXTRA_MODEL),
    }
    for fake in fakes.values():
        fake_host.start(fake)
    yield fakes
    for fake in fakes.values():
        fake_host.run(fake.stop())


def test_twenty_edits_under_load_take_effect_with_zero_failed_requests(load_fakes, start_gateway):
    fakes = load_fakes
    served = Served()
    gateway = start_gateway(served.config(fakes))
    load = Load(gateway.base_url)
    observer = Observer(gateway, fakes, load.failures)
    observed: list[str] = []

    def apply(change: str, new: Served, seen) -> None:
        nonlocal served
        served = new
        old = version(gateway)
        save_by_rename(gateway.config_path, yaml.safe_dump(new.config(fakes), sort_keys=False))
        wait_for(seen, change)
        # Seen by clients, then rolled out to its last stage (the old clusters removed).
        wait_for(lambda: version(gateway) != old, f"{change}: the version rolled out")
        observed.append(change)

    def rotate(provider: str, model: str, new_key: str, new: Served) -> None:
        fakes[provider].rotate(new_key)  # the provider accepts both keys while the gateway moves over
        apply(f"{provider} key rotated", new, lambda: observer.key_used(provider, model, new_key))
        load.wait_for_fresh_calls()  # no call from before the change is still on its way...
        fakes[provider].revoke_all_but(new_key)  # ...so the old key can go: a call that still used it would fail

    load.start()
    try:
        wait_for(lambda: min(load.done) >= 2, "the clients to get going")
        apply("team1 route added", replace(served, teams=(1,)), lambda: observer.team_route(1))
        apply("anthropic preferred", replace(served, first="anthropic"),
              lambda: observer.answered_by("fake-anthropic"))
        apply("extra provider added", replace(served, extra=True), observer.extra_serves)
        apply("team1 route removed", replace(served, teams=()), lambda: not observer.team_route(1))
        rotate("openai", OPENAI_MODEL, "ko-2", replace(served, openai_key="ko-2"))
        apply("team2 route added", replace(served, teams=(2,)), lambda: observer.team_route(2))
        apply("openai preferred", replace(served, first="openai"), lambda: observer.answered_by("fake-openai"))
        apply("extra provider removed", replace(served, extra=False), lambda: EXTRA_MODEL not in observer.models())
        apply("team3 route added", replace(served, teams=(2, 3)), lambda: observer.team_route(3))

        # An invalid edit in the middle: refused, and what is served stays as it was.
        before = version(gateway)
        broken = served.config(fakes)
        broken["providers"]["openai"]["type"] = "opnai"
        save_by_rename(gateway.config_path, yaml.safe_dump(broken, sort_keys=False))
        wait_for(lambda: reloads(gateway, "invalid") == 1, "the invalid edit to be refused")
        assert version(gateway) == before
        assert observer.answered_by("fake-openai") and observer.team_route(3) and observer.team_route(2)
        observed.append("invalid edit refused")

        apply("team2 route removed", replace(served, teams=(3,)), lambda: not observer.team_route(2))
        rotate("anthropic", ANTHROPIC_MODEL, "ka-2", replace(served, anthropic_key="ka-2"))
        apply("anthropic preferred again", replace(served, first="anthropic"),
              lambda: observer.answered_by("fake-anthropic"))
        apply("extra provider added again", replace(served, extra=True), observer.extra_serves)
        apply("team4 route added", replace(served, teams=(3, 4)), lambda: observer.team_route(4))
        apply("openai preferred again", replace(served, first="openai"), lambda: observer.answered_by("fake-openai"))
        apply("extra provider removed again", replace(served, extra=False),
              lambda: EXTRA_MODEL not in observer.models())
        apply("team3 route removed", replace(served, teams=(4,)), lambda: not observer.team_route(3))
        rotate("openai", OPENAI_MODEL, "ko-3", replace(served, openai_key="ko-3"))
        apply("team4 route removed", replace(served, teams=()), lambda: not observer.team_route(4))
        load.wait_for_fresh_calls()
    finally:
        load.finish()
        gateway.stop()

    assert len(observed) == 20, observed
    assert load.failures == [], f"{len(load.failures)} failed calls of {sum(load.done)}:\n" + "\n".join(
        load.failures[:20])
    assert all(n > 0 for n in load.done)


# ---------------------------------------------------------------- a Kubernetes ConfigMap


class ConfigMapVolume:
    """A directory as the kubelet mounts a ConfigMap: ``hapax.yaml`` -> ``..data/hapax.yaml``,
    ``..data`` -> a timestamped directory; an update writes a new directory and swaps ``..data``
    to it with one rename (atomic), then removes the old one. The file's own path never changes."""

    def __init__(self, root, text: str) -> None:
        self.root, self.generation = root, 0
        root.mkdir()
        self._write(text)
        (root / "hapax.yaml").symlink_to("..data/hapax.yaml")

    @property
    def config_path(self):
        return self.root / "hapax.yaml"

    def update(self, text: str) -> None:
        old = os.readlink(self.root / "..data")
        self._write(text)
        (self.root / old / "hapax.yaml").unlink()
        (self.root / old).rmdir()

    def _write(self, text: str) -> None:
        self.generation += 1
        data = self.root / f"..2026_12_05_00_00_00.{self.generation:09d}"
        data.mkdir()
        (data / "hapax.yaml").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(data.name)
        os.replace(link, self.root / "..data")


def test_a_configmap_update_is_applied_under_load_with_no_failed_request(fake, tmp_path):
    from tests.conftest import Gateway

    volume = ConfigMapVolume(tmp_path / "config", yaml.safe_dump(chat_config(fake)))
    gateway = Gateway(chat_config(fake), tmp_path / "config")  # writes through the symlink, as mounted
    try:
        assert volume.config_path.is_symlink() and post(gateway.url + "/v1/chat/completions", CHAT) == 200
        served = version(gateway)
        statuses: list[int] = []
        stop = threading.Event()

        def call() -> None:
            while not stop.is_set():
                statuses.append(post(gateway.url + "/v1/chat/completions", CHAT))

        callers = [threading.Thread(target=call, daemon=True) for _ in range(4)]
        for caller in callers:
            caller.start()
        wait_for(lambda: len(statuses) >= 20, "traffic before the update")
        volume.update(yaml.safe_dump(chat_config(fake, "/v1/configmap/chat")))
        wait_for(lambda: post(gateway.url + "/v1/configmap/chat", CHAT) == 200, "the updated ConfigMap served")
        settled = len(statuses)
        wait_for(lambda: len(statuses) >= settled + 20, "traffic after the update")
        stop.set()
        for caller in callers:
            caller.join(timeout=15)
        assert version(gateway) != served and reloads(gateway, "invalid") == 0
        assert len(statuses) > 40 and set(statuses) == {200}, sorted(set(statuses))
    finally:
        gateway.stop()
