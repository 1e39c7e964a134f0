"""What a provider does with each OpenAI request field: maps it, refuses it, or drops it and says so.

A silent drop is a bug: a client that sets ``seed`` and gets an answer must be
able to tell whether the seed was used. So each translator that does not send
the client's body as it is declares, per client API, ``FieldRules``: the fields
it maps (sends in the provider's terms), and the fields it refuses with a 400
that names them (those that ask for something in the answer the provider
cannot produce: more choices, log probabilities, audio). Every other field the
client sets is dropped and reported, sorted, in ``x-hapax-dropped-params``
(``hapax.wire.DROPPED_PARAMS_HEADER``); so is a field no rule knows yet, such
as one OpenAI adds later. docs/providers.md tabulates the decisions, and a
unit test keeps the table and these rules the same.

A field set to its documented default (``n: 1``, ``logprobs: false``, a
penalty of 0, ...) asks for nothing, so it is neither refused nor reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ext_proc.errors import invalid

# The value a field has when the client leaves it out: sending it changes nothing.
DEFAULTS: Mapping[str, Any] = {
    "n": 1, "logprobs": False, "top_logprobs": 0, "frequency_penalty": 0, "presence_penalty": 0,
    "logit_bias": {}, "metadata": {}, "parallel_tool_calls": True, "store": False,
    "service_tier": "auto", "verbosity": "medium", "modalities": ["text"], "stream": False,
    "encoding_format": "float",
}
_UNSET = object()

# OpenAI's Chat Completions request fields (``messages`` and ``model`` are every translator's).
CHAT_FIELDS = (
    "messages", "model", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs",
    "top_logprobs", "max_tokens", "max_completion_tokens", "n", "seed", "stop", "stream",
    "stream_options", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls",
    "functions", "function_call", "user", "safety_identifier", "response_format",
    "reasoning_effort", "service_tier", "store", "metadata", "modalities", "audio", "prediction",
    "web_search_options", "verbosity", "prompt_cache_key", "prompt_cache_retention",
)
# The legacy completions API's own fields; the rest of its body is a chat body.
COMPLETION_FIELDS = ("prompt", "suffix", "echo", "best_of", "logprobs")
EMBEDDINGS_FIELDS = ("input", "model", "dimensions", "encoding_format", "user")


def asks(name: str, value: Any) -> bool:
    """True when ``value`` asks the provider for something: it is set, and not to the default."""
    return value is not None and value != DEFAULTS.get(name, _UNSET)


@dataclass(frozen=True)
class FieldRules:
    """One provider type's decisions for the fields of one client API's body."""

    mapped: frozenset[str]
    # field -> why the provider cannot serve it: the message of the 400 that names it.
    refused: Mapping[str, str] = field(default_factory=dict)
    # Dropped and reported. Any field in neither set above is too; this set is what is
    # known to be dropped, for the documentation and its test.
    dropped: frozenset[str] = frozenset()

    def check(self, body: Mapping[str, Any]) -> list[str]:
        """Raises the 400 for the first refused field ``body`` sets; returns the fields it drops."""
        for name, why in self.refused.items():
            if asks(name, body.get(name)):
                raise invalid(why, param=name)
        return [name for name, value in body.items() if name not in self.mapped and asks(name, value)]


def message_fields_dropped(messages: Iterable[Any], mapped: Mapping[str, frozenset[str]]) -> list[str]:
    """``messages[].<key>`` for each message key set that the translator does not send.

    ``mapped``: role -> the keys sent of a message in that role. A user's ``name`` (a
    participant's name), an assistant's ``refusal`` or a ``reasoning_content`` echoed back
    have no place in some providers' messages; the answer still comes, and the client
    learns that they were left out.
    """
    unsent = {key for msg in messages if isinstance(msg, dict)
              for key, value in msg.items()
              if key not in mapped.get(str(msg.get("role")), frozenset()) and value not in (None, "")}
    return [f"messages[].{key}" for key in sorted(unsent)]


def reported(*groups: Iterable[str]) -> tuple[str, ...]:
    """The dropped fields of every group, once each and sorted: the header's value."""
    return tuple(sorted({name for group in groups for name in group}))
