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

A client confined to some ``models`` or ``routes`` is held to them by Envoy's RBAC
(``hapax.client_scope``, after json_to_metadata has read the body's model): 403.

The key lines are the virtual host's per-route config, so that adding or revoking a key is
a route update, which applies to the next request on every open connection (a listener
update would leave open connections on the old filter chain until they drain). ``/health``
is served without a key.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.basic_auth.v3 import basic_auth_pb2
from envoy.extensions.filters.http.header_to_metadata.v3 import header_to_metadata_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, string_pb2, value_pb2
from google.protobuf import any_pb2

from control_plane.config.model import ClientConfig, HapaxConfig
from control_plane.protobuf import pack
from hapax import client_keys, wire

FORM_FILTER = "hapax.client_key_form"
CHECK_FILTER = "hapax.client_key"
KEPT_FILTER = "hapax.client_key_id"
SCOPE_FILTER = "hapax.client_scope"
# Envoy's reason for an RBAC denial starts so; the policy it names is the client's.
OUT_OF_SCOPE_DETAILS_PREFIX = "rbac_access_denied"

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


def scope_filter(config: HapaxConfig) -> list[hcm_pb2.HttpFilter]:
    """What a client may call (its ``models`` and ``routes``): Envoy's RBAC, after json_to_metadata
    (it reads the body's model). Only when some client is confined; its rules are per route."""
    if not _confined(config):
        return []
    return [hcm_pb2.HttpFilter(name=SCOPE_FILTER, typed_config=pack(rbac_filter_pb2.RBAC()))]


def _confined(config: HapaxConfig) -> list[ClientConfig]:
    return [c for c in (config.clients or {}).values() if (c.models or c.routes) and c.keys]


def virtual_host_keys(config: HapaxConfig) -> dict[str, any_pb2.Any]:
    """The key lines every route checks against, and what each client may call (the virtual
    host's per-filter config: a route update, which applies to open connections at once)."""
    if config.clients is None:
        return {}
    lines = [line.htpasswd for client in config.clients.values() for line in client.keys] or [_NOBODY]
    users = basic_auth_pb2.BasicAuthPerRoute(users=base_pb2.DataSource(inline_string="\n".join(lines)))
    out = {CHECK_FILTER: pack(users)}
    confined = _confined(config)
    if confined:
        rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY,
                              policies={f"client:{c.name}": _out_of_scope(c) for c in confined})
        out[SCOPE_FILTER] = pack(rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(rules=rules)))
    return out


def _out_of_scope(client: ClientConfig) -> rbac_pb2.Policy:
    """Denies the client's keys a route or a model it is not given."""
    key = rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=[
        rbac_pb2.Principal(header=route_components_pb2.HeaderMatcher(
            name=wire.KEY_ID_HEADER, string_match=string_pb2.StringMatcher(exact=line.key_id)))
        for line in client.keys]))
    outside = []
    if client.routes:
        outside.append(rbac_pb2.Permission(not_rule=rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=[
            rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=string_pb2.StringMatcher(exact=path)))
            for path in client.routes]))))
    if client.models:
        def model_is(value: value_pb2.ValueMatcher) -> rbac_pb2.Permission:
            return rbac_pb2.Permission(metadata=metadata_pb2.MetadataMatcher(
                filter=wire.REQUEST_NAMESPACE, path=[metadata_pb2.MetadataMatcher.PathSegment(key=wire.BODY_MODEL)],
                value=value))
        # A body that names no model (GET /v1/models, a malformed one) is the routes' to allow.
        named = model_is(value_pb2.ValueMatcher(present_match=True))
        allowed = rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=[
            model_is(value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=model)))
            for model in client.models]))
        outside.append(rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=[
            named, rbac_pb2.Permission(not_rule=allowed)])))
    return rbac_pb2.Policy(principals=[key], permissions=[
        rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=outside))])


def no_key_needed(config: HapaxConfig) -> dict[str, any_pb2.Any]:
    """For a route anyone may call (``/health``)."""
    if config.clients is None:
        return {}
    off = pack(route_components_pb2.FilterConfig(disabled=True))
    return {FORM_FILTER: off, CHECK_FILTER: off, KEPT_FILTER: off, SCOPE_FILTER: off}


# basic_auth's reasons for its 401 (Envoy's response code details): no credentials at all,
# and every other (a wrong secret, an unknown id).
MISSING_KEY_DETAILS = "no_credential_for_basic_auth"
REFUSED_KEY_DETAILS_SUFFIX = "_for_basic_auth"


def bearer_challenge(headers: Sequence[base_pb2.HeaderValueOption]) -> list[base_pb2.HeaderValueOption]:
    """basic_auth asks for Basic credentials; clients of this API send a Bearer key."""
    return [*headers, base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="www-authenticate", value='Bearer realm="hapax"'),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)]
