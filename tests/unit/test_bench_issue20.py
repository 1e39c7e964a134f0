"""The pure pieces of the benchmark's per-core, SDK-shaped runs (issue #20): no process is started."""

from __future__ import annotations

import json

import yaml

from bench.bare_proxy import ENTRY_PREFIXES, FAKE_PREFIXES
from bench.goals import sdk_goals
from bench.http1 import encode_request
from bench.measurement import Measurement
from bench.payloads import SDK_HEADERS, anthropic_message, chat_request, sdk_chat_request
from bench.pinning import CorePlan, core_plan
from bench.runner import Runner
from bench.scenarios import CLOSED, FAST, SDK, TIMING, Scenario, full_plan, in_rounds, quick_plan
from bench.targets import (
    ALIASED,
    APART,
    KEYED,
    KINDS,
    NEVER_REACHED,
    Fakes,
    Target,
    apart_config,
    client_key,
    hapax_config,
    seed_config,
    target_a,
)
from bench.wrk import write_script
from control_plane.config import parse_config
from hapax.client_keys import KeyLine, matches


class _Proc:
    pid = 0


FAKES = Fakes(envoy=_Proc(), envoy_port=1111, paced=_Proc(), paced_port=2222)  # type: ignore[arg-type]


def test_the_last_cpu_measures_and_the_others_load() -> None:
    assert core_plan([0, 1]) == CorePlan(measured=1, load=(0,))
    assert core_plan([3, 1, 2]) == CorePlan(measured=3, load=(1, 2))
    assert core_plan([0]) is None  # nothing to keep apart
    assert CorePlan(1, (0,)).taskset() == ["taskset", "-c", "1"]


def test_sdk_body_is_what_the_sdk_encodes() -> None:
    # Captured from openai 3.63.0: compact, keys model, stream, messages; stream false too; no stream_options.
    body = sdk_chat_request(2, model="gpt-4o-mini", stream=False)
    assert body == b'{"model":"gpt-4o-mini","stream":false,"messages":[{"role":"user","content":"th"}]}'
    assert b"stream_options" not in sdk_chat_request(300, model="m", stream=True)
    assert b"stream_options" in chat_request(300, model="m", stream=True)  # the fast lane asks for usage


def test_sdk_headers_reach_the_wire_once() -> None:
    raw = encode_request("POST", "127.0.0.1", 80, "/v1/chat/completions", b"{}", headers=SDK_HEADERS)
    head = raw.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.count("content-type:") == 1
    assert "x-stainless-package-version: 3.63.0" in head and "accept-encoding: gzip, deflate" in head


def test_wrk_script_sets_each_header_once(tmp_path) -> None:
    script = write_script(b"{}", "t", tmp_path, SDK_HEADERS).read_text()
    assert script.lower().count('["content-type"]') == 1
    assert 'wrk.headers["user-agent"] = "OpenAI/Python 3.63.0"' in script


def test_anthropic_answer_is_a_messages_reply() -> None:
    reply = json.loads(anthropic_message())
    assert reply["type"] == "message" and reply["content"][0]["type"] == "text"
    assert set(reply["usage"]) == {"input_tokens", "output_tokens"}


def test_c_has_an_anthropic_provider_and_one_worker_when_pinned() -> None:
    config = hapax_config(FAKES, CorePlan(1, (0,)))
    assert config["providers"]["anthropic"]["type"] == "anthropic"
    assert config["providers"]["anthropic"]["base_url"] == "http://127.0.0.1:1111/anthropic"
    assert config["provider_preference"][0] == "json"  # model=auto lands on the JSON answer
    assert config["ext_proc"] == {"workers": 1}
    assert "ext_proc" not in hapax_config(FAKES)
    assert set(KINDS) <= set(ENTRY_PREFIXES) == set(FAKE_PREFIXES)


def test_seed_config_puts_anthropic_first_and_keeps_the_seed() -> None:
    config = seed_config(FAKES)
    assert config["provider_preference"][0] == "anthropic"
    assert set(config["providers"]) == {"openai", "anthropic", "ollama"}
    assert config["routes"]  # the seed's department route
    assert config["server"]["port"] == 0


def test_plans_keep_the_fast_lanes_and_add_the_sdk_ones() -> None:
    for plan in (quick_plan(), full_plan()):
        clients = {s.client for s in plan}
        assert clients == {FAST, SDK}
        kinds = {s.kind for s in plan if s.client == SDK}
        assert {"json", "auto", "anthropic", "seed", "paced"} <= kinds
        streams = {s.connections for s in plan if s.client == SDK and s.load == TIMING}
        assert streams == {1, 8}
        assert len({s.name for s in plan}) == len(plan)  # names tell scenarios apart (--only)
    # The keyed lanes: in the full plan only, at c=64, right after the plain lane's c=64.
    full = full_plan()
    assert not {s.kind for s in quick_plan()} & set(KEYED)
    names = [s.name for s in full]
    at = names.index("sdk: json 300B c=64")
    assert names[at + 1: at + 3] == ["sdk: json with client keys 300B c=64", "sdk: json with keys + limits 300B c=64"]


def test_each_gateway_apart_gets_a_config_hapax_accepts() -> None:
    for kind in APART:
        config = parse_config(yaml.safe_dump(apart_config(kind, FAKES)), env={})
        assert config.server.port == 0
    key, line = client_key()
    keys = parse_config(yaml.safe_dump(apart_config("keys", FAKES)), env={})
    assert keys.clients is not None and not keys.limited
    assert matches(key, KeyLine.parse(line)) and keys.clients["bench"].keys == (KeyLine.parse(line),)
    limited = parse_config(yaml.safe_dump(apart_config("limits", FAKES)), env={})
    assert limited.limited and limited.limits.store == ""  # embedded
    limits = limited.clients["bench"].limits  # type: ignore[index]
    assert limits.requests_per_minute == limits.tokens_per_day == NEVER_REACHED
    assert hapax_config(FAKES).get("clients") is None  # C's main gateway stays open
    experiment = parse_config(yaml.safe_dump(apart_config("experiment", FAKES)), env={}).experiments["bench"]
    assert experiment.buckets() == (5000, 5000) and {v.provider for v in experiment.variants} == {"json"}
    assert "experiments" not in hapax_config(FAKES)  # nor does it have one


def test_keyed_requests_carry_the_key_to_every_target(tmp_path) -> None:
    key, _ = client_key()
    runner = Runner([], tmp_path, 0.01)
    for kind in KEYED:
        assert ALIASED[kind] == "json" and kind in target_a(FAKES).endpoints
        for client in (SDK, FAST):
            headers = runner._headers(Scenario(kind, "300B", CLOSED, 1, 64, client=client), Target("B", "", {}))
            assert headers["authorization"] == f"Bearer {key}"
    assert runner._headers(Scenario("json", "300B", CLOSED, 1, 64, client=SDK),
                           Target("B", "", {}))["authorization"] == "Bearer sk-bench"


def test_sdk_shape_matches_the_installed_sdk() -> None:
    """The payload was built from a capture; the capture is re-run here against the installed SDK."""
    from bench.sdk_capture import capture

    for stream in (False, True):
        got = capture(stream, content="th", model="gpt-4o-mini")
        assert got.body == sdk_chat_request(2, model="gpt-4o-mini", stream=stream)
        sent = {k.lower() for k, _ in got.headers} - {"host", "connection", "content-length"}
        assert sent == set(SDK_HEADERS)


def _closed_rounds(kind: str, rates: list[tuple[float, float]]) -> list[Measurement]:
    """Measurements of ``kind`` at c=64, one round per (B, C) req/s pair, over 10 s each."""
    plan = in_rounds([Scenario(kind, "300B", CLOSED, 10, 64, client=SDK)], len(rates))
    return [Measurement(scenario, target, int(rate * 10), 10.0, 1.0, 1.0, 1.0)
            for scenario, (b, c) in zip(plan, rates, strict=True) for target, rate in (("B", b), ("C", c))]


def test_rounds_run_the_whole_plan_again_and_are_told_apart() -> None:
    plan = in_rounds(full_plan(), 3)
    assert len(plan) == 3 * len(full_plan())
    assert [s.round for s in plan[:: len(full_plan())]] == [1, 2, 3]
    assert len({s.name for s in plan}) == len(plan)  # each round's rows are its own


def test_keyed_lanes_are_judged_against_the_plain_lane_of_the_same_round() -> None:
    plain = _closed_rounds("json", [(10_000, 4_500), (10_000, 4_000)])
    keyed = _closed_rounds("keys", [(10_000, 4_400), (10_000, 3_000)])
    goal = next(g for g in sdk_goals(plain + keyed) if g.what.startswith("JSON with client keys"))
    assert goal.measured == "0.86x (median of 0.98x, 0.75x); C's req/s alone 0.86x" and goal.met is False
    assert next(g for g in sdk_goals(plain) if g.what.startswith("JSON with keys + limits")).met is None


def test_a_target_over_rounds_is_judged_on_the_median_round_and_lists_each() -> None:
    # 0.30, 0.45, 0.42: the median round (0.42) meets 0.40 though the first did not.
    measured = _closed_rounds("json", [(10_000, 3_000), (10_000, 4_500), (10_000, 4_200)])
    goal = next(g for g in sdk_goals(measured) if g.what.startswith("JSON, OpenAI provider, model named"))
    assert goal.met is True
    assert goal.measured == "0.420 (median of 0.300, 0.450, 0.420)"


def test_the_responses_kind_sends_a_responses_body_to_each_targets_responses_path_and_the_fake_answers_one(
        tmp_path) -> None:
    """A, B and C get the same Responses body, on a path ending in /responses, where the fake answers a
    Response: C's is the OpenAI lane to the JSON provider's own model (its /responses)."""
    from bench.fake_provider import routes
    from bench.payloads import MODELS, openai_response, responses_request
    from bench.targets import API_PATHS, api_request

    body, headers = api_request("responses", 300)
    assert body == responses_request(300, model=MODELS["responses"]) and headers == SDK_HEADERS
    assert json.loads(body)["model"] == hapax_config(FAKES)["providers"]["json"]["model"]
    assert target_a(FAKES).endpoints["responses"].url.endswith("/json/v1/responses")
    assert API_PATHS["responses"] == "/v1/responses"
    [route] = [r for r in routes() if r["match"].get("safe_regex", {}).get("regex", "").endswith("/responses$")]
    assert route["direct_response"]["body"]["inline_string"] == openai_response().decode()
    assert json.loads(openai_response())["object"] == "response"
    runner = Runner([], tmp_path, 0.01)
    assert runner._body(Scenario("responses", "300B", CLOSED, 1, 64, client=SDK)) == body


def test_the_responses_and_messages_shapes_match_the_installed_sdks() -> None:
    """As for chat: the bench's Responses and Messages requests are what the SDKs really send."""
    from bench.payloads import ANTHROPIC_HEADERS, messages_request, responses_request
    from bench.sdk_capture import capture_messages, capture_responses

    responses = capture_responses(content="th", model="gpt-4o-mini")
    assert responses.body == responses_request(2, model="gpt-4o-mini")
    assert {k.lower() for k, _ in responses.headers} - {"host", "connection", "content-length"} == set(SDK_HEADERS)
    messages = capture_messages(content="th", model="claude-x")
    assert messages.body == messages_request(2, model="claude-x")
    sent = {k.lower(): v for k, v in messages.headers if k.lower() not in ("host", "connection", "content-length")}
    assert sent == ANTHROPIC_HEADERS
