"""What the control plane tells Envoy about compression: providers answer plain, clients get gzip (JSON only)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2

from control_plane import resources as res
from control_plane.config import parse_config
from control_plane.plan import make_plan
from control_plane.resources import passthrough
from tests.unit.test_passthrough import CONFIG


def _plan():
    return make_plan(parse_config(CONFIG))


def test_every_route_to_a_provider_asks_it_for_an_uncompressed_answer():
    routes = [r for r in res.route_configuration(_plan()).virtual_hosts[0].routes
              if r.HasField("route") and r.route.cluster != res.EXT_PROC_HTTP_CLUSTER]
    kinds = {r.name.split(":")[0] for r in routes}
    # Both lanes and the router step's routes (the standard ones besides the configured).
    assert kinds == {"passthrough", "model", "chat", "completion", "embeddings", "models", "messages", "responses",
                     "count_tokens"}
    for route in routes:
        [asked] = [h for h in route.request_headers_to_add if h.header.key == "accept-encoding"]
        assert asked.header.value == "identity", route.name
        # Replaces the client's value rather than adding to it.
        assert asked.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD, route.name


def _filters() -> list:
    return list(res.http_connection_manager(_plan()).http_filters)


def test_the_compressor_runs_last_on_answers_so_that_envoy_and_ext_proc_read_them_plain():
    names = [f.name for f in _filters()]
    # Response filters run in reverse order: first in the list compresses after the others read.
    assert names[0] == "envoy.filters.http.compressor"
    assert names.index(passthrough.JSON_TO_METADATA_FILTER) > 0
    assert names.index(res.EXT_PROC_FILTER) > 0


def test_the_compressor_gzips_json_answers_and_never_a_stream():
    config = compressor_pb2.Compressor()
    _filters()[0].typed_config.Unpack(config)
    assert config.compressor_library.name == "envoy.compression.gzip.compressor"
    assert list(config.response_direction_config.common_config.content_type) == ["application/json"]
    assert not config.HasField("request_direction_config")  # requests go to providers as the client sent them


def test_the_compressor_leaves_an_answer_of_a_few_hundred_bytes_plain():
    config = compressor_pb2.Compressor()
    _filters()[0].typed_config.Unpack(config)
    assert config.response_direction_config.common_config.min_content_length.value == 1024
