"""What a passthrough-lane attempt keeps of the request's headers: an allow-list, in Envoy alone.

Headers to providers are an allow-list (``hapax.wire.PROVIDER_REQUEST_HEADERS`` and the
provider's ``forward_headers``). Attempts that ext_proc sees apply it in the upstream step
(``ext_proc/steps/upstream.py``: ``not_kept``); the passthrough lane's never reach Python,
and Envoy has no "remove all but". It has ``remove_on_match``, which removes every header
whose name matches a regular expression: so each lane provider's per-attempt filters start
with a header_mutation whose expression matches every name *but* the allowed ones (a finite
set has a regular complement), then inject the provider's key. One RE2 match per header,
no Python. (Each expression is larger than RE2's default cap on a program: the bootstrap's
runtime raises it, hapax/envoy_process.py.)

Pseudo-headers and the host are never matched: Envoy sets them for the provider.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from xds.core.v3 import extension_pb2

from control_plane.config.model import ProviderConfig
from control_plane.protobuf import pack
from hapax import wire

_END = ""  # marks a trie node where an allowed name ends


def kept_headers(provider: ProviderConfig) -> frozenset[str]:
    """What an attempt to ``provider`` keeps of the request's headers (before its key is set): with a
    Messages body sent as it came (an Anthropic provider), the version and betas it was written for."""
    as_sent = wire.ANTHROPIC_AS_SENT_HEADERS if provider.type == "anthropic" else ()
    return frozenset((*wire.PROVIDER_REQUEST_HEADERS, *provider.forward_headers, *as_sent))


def allow_list_filter(provider: ProviderConfig) -> extension_pb2.TypedExtensionConfig:
    """A header_mutation removing every request header ``provider`` is not to be sent."""
    remove = mutation_rules_pb2.HeaderMutation(remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
        key_matcher=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(
            regex=unlisted_names(kept_headers(provider))))))
    config = header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(request_mutations=[remove]))
    return extension_pb2.TypedExtensionConfig(name="provider_headers", typed_config=pack(config))


def unlisted_names(kept: Iterable[str]) -> str:
    """An RE2 expression matching (whole) every lowercase header name but ``kept``, the host
    and pseudo-headers (``:path``...).

    Built on the trie of the allowed names: from each node, a name leaves the allow-list by
    going on with a character no allowed name has there, or by ending where none ends.
    """
    trie: dict[str, dict] = {}
    for name in {*kept, *wire.NEVER_REMOVED_HEADERS}:
        node = trie
        for char in name:
            node = node.setdefault(char, {})
        node[_END] = {}
    return _leaving(trie, top=True)


def _leaving(node: dict[str, dict], *, top: bool = False) -> str:
    """The expression for what, from ``node`` on, is not the rest of an allowed name."""
    chars = sorted(c for c in node if c != _END)
    excluded = chars + [":"] if top else chars  # a name starting with ":" is a pseudo-header
    going_on = f"[^{''.join(_escape(c) for c in excluded)}]" if excluded else "."
    parts = [going_on + ".*", *(_escape(c) + _leaving(node[c]) for c in chars)]
    if _END not in node and not top:
        parts.append("")  # stopping here: a prefix of an allowed name, not one
    return f"(?:{'|'.join(parts)})"


def _escape(char: str) -> str:
    # RE2 takes any ASCII punctuation escaped as itself; letters and digits are left alone.
    return char if char.isalnum() else "\\" + char
