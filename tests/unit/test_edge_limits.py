"""The edge limits the control plane gives Envoy's connection manager (issue #18).

End to end, with the answers Envoy gives: tests/e2e/test_hostile_input_e2e.py.
"""

from __future__ import annotations

from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2

from control_plane import resources as res
from control_plane.config import parse_config
from control_plane.plan import make_plan
from control_plane.resources import listeners
from hapax import wire
from tests.unit.test_passthrough import CONFIG


def _hcm(extra: str = ""):
    return res.http_connection_manager(make_plan(parse_config(CONFIG + extra)))


def test_headers_then_the_whole_request_must_arrive_in_time():
    hcm = _hcm()
    assert hcm.request_headers_timeout.seconds == listeners.REQUEST_HEADERS_TIMEOUT
    assert hcm.request_timeout.seconds == 60
    assert hcm.stream_idle_timeout.seconds == 300


def test_the_request_timeout_comes_from_the_config():
    assert _hcm("server: {request_timeout: 7}\n").request_timeout.seconds == 7


def test_header_count_and_size_are_bounded():
    hcm = _hcm()
    assert hcm.common_http_protocol_options.max_headers_count.value == listeners.MAX_HEADERS_COUNT
    assert hcm.max_request_headers_kb.value == listeners.MAX_REQUEST_HEADERS_KB


def _openai_replies(hcm=None) -> list:
    """The local replies in OpenAI's error shape (the Messages API's routes' twins left out)."""
    hcm = hcm or _hcm()
    return [m for m in hcm.local_reply_config.mappers if "type" not in m.body_format_override.json_format.fields]


def test_the_edge_answers_are_json_with_their_own_codes():
    codes = {m.body_format_override.json_format["error"]["code"]: m.status_code.value
             for m in _openai_replies()}
    assert codes["request_timeout"] == 408
    assert codes["request_header_fields_too_large"] == 431
    assert codes["upgrade_not_supported"] == 400


def _expression(flt) -> str:
    expression = cel_pb2.ExpressionFilter()
    flt.extension_filter.typed_config.Unpack(expression)
    return expression.expression


def test_the_gateways_own_limits_answer_503_overloaded_with_retry_after():
    mappers = [m for m in _openai_replies()
               if m.body_format_override.json_format["error"]["code"] == "overloaded"
               and any(h.header.key == "retry-after" for h in m.headers_to_add)]
    # ext_proc's cluster at its limit (an empty 500 otherwise), and the overload manager.
    # ext_proc's streams, the overload manager, a provider's circuit breaker (UO).
    assert [m.status_code.value for m in mappers] == [503, 503, 503]
    ext_proc_full, overload_manager, _ = (m.filter.and_filter.filters for m in mappers)
    assert ext_proc_full[0].status_code_filter.comparison.value.default_value == 500
    assert "'overflow'" in _expression(ext_proc_full[1])
    assert overload_manager[0].status_code_filter.comparison.value.default_value == 503
    assert _expression(overload_manager[1]) == "response.code_details == 'overload'"
    # They come first: the status-only mappers must not catch these.
    assert mappers[:2] == _openai_replies()[:2]


def _marks_for_the_router_step(mapper) -> bool:
    return any(h.header.key == wire.UNAVAILABLE_HEADER for h in mapper.headers_to_add)


def test_only_a_routed_requests_503_unavailable_is_marked_for_the_router_steps_reasons():
    marked = [m for m in _openai_replies() if _marks_for_the_router_step(m)]
    assert len(marked) == 1
    conditions = marked[0].filter.and_filter.filters
    assert [c.header_filter.header.name for c in conditions if c.HasField("header_filter")] == [wire.CHAIN_HEADER]
    assert "UH" in conditions[0].response_flag_filter.flags
    # An attempt listener's replies never reach the router step as Envoy's own: never marked.
    assert not any(_marks_for_the_router_step(m) for m in listeners.local_reply_config().mappers)


def test_on_the_messages_apis_routes_every_reply_is_in_anthropics_error_shape_too():
    replies = list(_hcm().local_reply_config.mappers)
    twins = [m for m in replies if "type" in m.body_format_override.json_format.fields]
    openai = _openai_replies()
    assert len(twins) == len(openai) and replies[:len(twins)] == twins  # each one, first
    for twin, original in zip(twins, openai, strict=True):
        assert twin.status_code == original.status_code and list(twin.headers_to_add) == list(original.headers_to_add)
        body = twin.body_format_override.json_format
        assert body["type"] == "error" and body["error"]["type"] == wire.anthropic_error_type(
            original.status_code.value)
        assert body["error"]["message"] == original.body_format_override.json_format["error"]["message"]
        assert twin.filter.and_filter.filters[0] == original.filter  # the route's handler is looked at last
        assert "'messages'" in _expression(twin.filter.and_filter.filters[1])
    # A gateway that serves no Messages route has none.
    assert not [m for m in _hcm("default_routes: false\n").local_reply_config.mappers
                if "type" in m.body_format_override.json_format.fields]
