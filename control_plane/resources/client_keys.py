"""Envoy's check of client keys (``clients:``), before any other filter reads the request.

Two filters, both Envoy's own, and nothing of Python on the way:

- ``hapax.client_key_form`` (Lua): takes the key from ``Authorization: Bearer <key>`` (the
  OpenAI SDKs) or ``x-api-key`` (the Anthropic SDK), and puts it where ``basic_auth`` reads
  credentials: ``Authorization: Basic base64(<id>:<secret>)``. Any other ``Authorization`` and
  any ``x-hapax-key-id`` the client sent are removed, so a request without a well-formed key
  reaches the check without credentials.
- ``hapax.client_key`` (``basic_auth``): compares the SHA-1 of the secret with the key line of
  that id, and on success writes the id to ``x-hapax-key-id`` (hapax/wire.py);
  ``hapax.client_key_id`` copies it to the request's metadata, for the access log.

The key lines are the virtual host's per-route config, so that adding or revoking a key is
a route update, which applies to the next request on every open connection (a listener
update would leave open connections on the old filter chain until they drain). ``/health``
is served without a key.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.basic_auth.v3 import basic_auth_pb2
from envoy.extensions.filters.http.header_to_metadata.v3 import header_to_metadata_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2

from control_plane.config.model import HapaxConfig
from control_plane.protobuf import pack
from hapax import client_keys, wire

FORM_FILTER = "hapax.client_key_form"
CHECK_FILTER = "hapax.client_key"
KEPT_FILTER = "hapax.client_key_id"

# basic_auth refuses an empty list; this line's user is no key id (ids are hex), so it admits
# nobody, as a config with no key line must.
_NOBODY = "nobody:{SHA}AAAAAAAAAAAAAAAAAAAAAAAAAAA="

# Lua patterns for the key: the same shape as client_keys.KEY_PATTERN.
_LUA = f"""
function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove("{wire.KEY_ID_HEADER}")
  local key = nil
  local authorization = headers:get("authorization")
  if authorization ~= nil then
    key = string.match(authorization, "^[Bb]earer%s+(%S+)%s*$")
  end
  if key == nil then
    key = headers:get("x-api-key")
  end
  headers:remove("authorization")
  if key == nil then
    return
  end
  local id, secret = string.match(key, "^{client_keys.KEY_PREFIX}%-(%x+)%-(%x+)$")
  if id ~= nil then
    headers:add("authorization", "Basic " .. handle:base64Escape(id .. ":" .. secret))
  end
end
"""


def key_filters(config: HapaxConfig) -> list[hcm_pb2.HttpFilter]:
    """The two filters, first in the connection manager; none when the gateway is open."""
    if config.clients is None:
        return []
    form = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=_LUA))
    check = basic_auth_pb2.BasicAuth(users=base_pb2.DataSource(inline_string=_NOBODY),
                                     forward_username_header=wire.KEY_ID_HEADER)
    # The id, checked, where the access log finds it: the lane's per-attempt header filter removes
    # the header from the very map the log reads at the end (an upstream filter edits it in place).
    keep = header_to_metadata_pb2.Config(request_rules=[header_to_metadata_pb2.Config.Rule(
        header=wire.KEY_ID_HEADER, on_header_present=header_to_metadata_pb2.Config.KeyValuePair(
            metadata_namespace=wire.REQUEST_NAMESPACE, key=wire.REQUEST_KEY_ID))])
    return [hcm_pb2.HttpFilter(name=FORM_FILTER, typed_config=pack(form)),
            hcm_pb2.HttpFilter(name=CHECK_FILTER, typed_config=pack(check)),
            hcm_pb2.HttpFilter(name=KEPT_FILTER, typed_config=pack(keep))]


def virtual_host_keys(config: HapaxConfig) -> dict[str, any_pb2.Any]:
    """The key lines every route checks against (the virtual host's per-filter config)."""
    if config.clients is None:
        return {}
    lines = [line.htpasswd for client in config.clients.values() for line in client.keys] or [_NOBODY]
    users = basic_auth_pb2.BasicAuthPerRoute(users=base_pb2.DataSource(inline_string="\n".join(lines)))
    return {CHECK_FILTER: pack(users)}


def no_key_needed(config: HapaxConfig) -> dict[str, any_pb2.Any]:
    """For a route anyone may call (``/health``)."""
    if config.clients is None:
        return {}
    off = pack(route_components_pb2.FilterConfig(disabled=True))
    return {FORM_FILTER: off, CHECK_FILTER: off, KEPT_FILTER: off}


# basic_auth's reasons for its 401 (Envoy's response code details): no credentials at all,
# and every other (a wrong secret, an unknown id).
MISSING_KEY_DETAILS = "no_credential_for_basic_auth"
REFUSED_KEY_DETAILS_SUFFIX = "_for_basic_auth"


def bearer_challenge(headers: Sequence[base_pb2.HeaderValueOption]) -> list[base_pb2.HeaderValueOption]:
    """basic_auth asks for Basic credentials; clients of this API send a Bearer key."""
    return [*headers, base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="www-authenticate", value='Bearer realm="hapax"'),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)]
