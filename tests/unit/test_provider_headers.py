"""What a provider is sent of the client's headers: an allow-list, per provider.

The upstream step's side (every attempt ext_proc sees) and the runtime that carries
each provider's ``forward_headers``; the passthrough lane's Envoy filter is checked
in test_passthrough.py, and all of it for real in tests/e2e/test_provider_headers_e2e.py.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_pb
from google.protobuf import struct_pb2, text_format

from control_plane.config import parse_config
from control_plane.plan import make_plan
from control_plane.resources.listeners import http_connection_manager
from control_plane.resources.runtime import runtime
from ext_proc.runtime import RuntimeView
from ext_proc.steps.upstream import UpstreamStep, not_kept
from hapax.v1 import runtime_pb2
from hapax.wire import EXT_PROC_ATTRIBUTES, PROVIDER_REQUEST_HEADERS, REQUEST_METADATA_ATTRIBUTE
from hapax.wire import HOST_METADATA_ATTRIBUTE as HOST_METADATA
from hapax.wire import ROUTE_METADATA_ATTRIBUTE as ROUTE_METADATA
from tests.unit.test_ext_proc_units import body_metadata

# What reaches the upstream step of a retry: the client's headers, Envoy's, the steps', and
# what the previous attempt (to OpenAI) set.
REQUEST = {
    ":method": "POST", ":path": "/v1/chat/completions?organization=org-x", ":authority": "gateway",
    ":scheme": "http", "host": "gateway",
    "content-type": "application/json", "content-length": "42", "accept": "application/json",
    "accept-encoding": "gzip", "x-request-id": "rid-1",
    "cookie": "session=1", "openai-organization": "org-x", "openai-project": "proj-x",
    "anthropic-beta": "tools-2024", "user-agent": "OpenAI/Python", "x-stainless-os": "Linux",
    "x-forwarded-for": "10.0.0.1", "x-forwarded-proto": "http", "x-envoy-external-address": "10.0.0.1",
    "x-envoy-attempt-count": "2", "x-hapax-version": "7", "x-hapax-start": "1.5",
    "authorization": "Bearer sk-openai-of-the-gateway", "x-trace-id": "t-1",
}
KEPT = frozenset(PROVIDER_REQUEST_HEADERS)


def test_every_header_but_the_allow_list_is_removed():
    removed = set(not_kept(REQUEST, KEPT))
    assert removed == {
        "cookie", "openai-organization", "openai-project", "anthropic-beta", "user-agent", "x-stainless-os",
        "x-forwarded-for", "x-forwarded-proto", "x-envoy-external-address", "x-envoy-attempt-count",
        "x-hapax-version", "x-hapax-start", "authorization", "x-trace-id"}


def test_pseudo_headers_the_host_and_what_the_attempt_sets_are_never_removed():
    removed = not_kept(REQUEST, KEPT, {":path": "/v1/messages", "authorization": "Bearer k"})
    assert not [h for h in removed if h.startswith(":") or h == "host" or h == "authorization"]
    assert set(REQUEST) - set(removed) == {*KEPT, ":method", ":path", ":authority", ":scheme", "host",
                                           "authorization"}


def test_a_forwarded_header_is_kept():
    removed = not_kept(REQUEST, KEPT | {"anthropic-beta", "x-trace-id"})
    assert "anthropic-beta" not in removed and "x-trace-id" not in removed
    assert "cookie" in removed and "openai-organization" in removed


# ---------------------------------------------------------------- the runtime carries forward_headers

CONFIG = """\
providers:
  gpt: {type: openai, model: gpt-4o, api_key: sk-gpt, forward_headers: [OpenAI-Organization]}
  claude: {type: anthropic, model: claude-3-haiku, api_key: sk-claude, forward_headers: [anthropic-beta]}
  llama: {type: ollama, model: llama3.2}
"""


def _view() -> RuntimeView:
    plan = make_plan(parse_config(CONFIG))
    return RuntimeView.from_proto(runtime(plan, "v1"), frozenset({"openai", "anthropic", "ollama"}))


def test_each_provider_keeps_what_every_provider_gets_and_its_own_forward_headers():
    view = _view()
    assert view.providers["gpt"].kept_headers == KEPT | {"openai-organization"}
    assert view.providers["claude"].kept_headers == KEPT | {"anthropic-beta"}
    assert view.providers["llama"].kept_headers == KEPT


def test_the_runtime_says_where_each_providers_key_comes_from_without_a_variable_its_key_path():
    view = RuntimeView.from_proto(runtime(make_plan(parse_config(
        "providers:\n  gpt: {type: openai, model: gpt-4o, api_key: '${HAPAX_GPT_KEY}'}\n"
        "  claude: {type: anthropic, model: claude-3-haiku, api_key: sk-claude}\n",
        env={"HAPAX_GPT_KEY": "sk-gpt"})), "v1"), frozenset({"openai", "anthropic"}))
    assert view.providers["gpt"].api_key_source == "providers.gpt.api_key, from ${HAPAX_GPT_KEY}"
    assert view.providers["claude"].api_key_source == "providers.claude.api_key"


def test_a_runtime_from_an_older_control_plane_forwards_nothing():
    rt = runtime_pb2.Runtime(config_version="1")
    rt.providers.add(name="a", type="openai", model="m", base_url="https://api.example.com/v1")
    rt.chains.add(cluster="chain.a", providers=["a"], attempts=1)
    assert RuntimeView.from_proto(rt, frozenset({"openai"})).providers["a"].kept_headers == KEPT


# ---------------------------------------------------------------- the upstream step


def _attributes(provider: str, **route: str) -> dict[str, struct_pb2.Struct]:
    host_md, route_md = base_pb2.Metadata(), base_pb2.Metadata()
    host_md.filter_metadata["hapax"].update({"provider": provider})
    route_md.filter_metadata["hapax"].update({"handler": "chat", **route})
    return {EXT_PROC_ATTRIBUTES: struct_pb2.Struct(fields={
        HOST_METADATA: struct_pb2.Value(string_value=text_format.MessageToString(host_md)),
        ROUTE_METADATA: struct_pb2.Value(string_value=text_format.MessageToString(route_md))})}


def _headers(extra: dict[str, str] | None = None) -> ext_pb.HttpHeaders:
    return ext_pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in {**REQUEST, **(extra or {})}.items()]))


def test_a_translated_attempt_removes_the_rest_with_the_headers_and_sets_its_own_with_the_body():
    step = UpstreamStep(_view())
    headers = step.request_headers(_headers(), _attributes("claude")).request_headers.response.header_mutation
    assert set(headers.remove_headers) == set(not_kept(REQUEST, KEPT | {"anthropic-beta"}))
    assert "authorization" in headers.remove_headers  # the OpenAI attempt's key goes
    body = b'{"model": "claude-3-haiku", "messages": [{"role": "user", "content": "hi"}]}'
    mutation = step.request_body(ext_pb.HttpBody(body=body, end_of_stream=True), None) \
        .request_body.response.header_mutation
    assert {h.header.key for h in mutation.set_headers} >= {"x-api-key", "anthropic-version", ":path"}
    assert not mutation.remove_headers


def test_a_body_sent_as_it_is_gets_its_headers_set_and_the_rest_removed_at_once():
    step = UpstreamStep(_view())
    attributes = _attributes("gpt", lane="model")
    attributes[EXT_PROC_ATTRIBUTES].fields[REQUEST_METADATA_ATTRIBUTE].string_value = body_metadata(
        model="gpt-4o", stream=True, include_usage=True)
    response = step.request_headers(_headers(), attributes)
    mutation = response.request_headers.response.header_mutation
    set_headers = {h.header.key: h.header.raw_value for h in mutation.set_headers}
    assert set_headers["authorization"] == b"Bearer sk-gpt"
    assert set(mutation.remove_headers) == set(not_kept(REQUEST, KEPT | {"openai-organization"}, set_headers))
    assert "openai-organization" not in mutation.remove_headers  # gpt forwards it
    assert "authorization" not in mutation.remove_headers and "cookie" in mutation.remove_headers


# ---------------------------------------------------------------- the listeners


def test_envoy_drops_underscore_names_and_adds_no_forwarding_headers_of_its_own():
    hcm = http_connection_manager(make_plan(parse_config(CONFIG)))
    options = hcm.common_http_protocol_options
    assert options.headers_with_underscores_action == options.DROP_HEADER
    assert hcm.skip_xff_append and hcm.use_remote_address.value
    router = router_pb2.Router()
    hcm.http_filters[-1].typed_config.Unpack(router)
    assert router.suppress_envoy_headers
