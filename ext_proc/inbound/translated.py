"""What an inbound API's request becomes: the canonical chat, and what in it no chat can carry.

A request in a client API some provider type speaks itself (Anthropic's Messages, OpenAI's
Responses) may ask for what only that provider can do: a tool it runs, state it holds. That is
no 400 at the door (the native provider serves it, Translator.native_request); it is one for an
attempt at a provider that must be sent the translation, saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Translated:
    chat: dict[str, Any]  # the canonical OpenAI chat body
    untranslatable: str = ""  # what no chat can carry, in words ("" if nothing)
    # The client's fields the chat leaves out, sorted: a translated attempt reports them in
    # x-hapax-dropped-params, beside the ones its provider's translator drops (never silently).
    dropped: tuple[str, ...] = ()


def asked(body: dict[str, Any], defaults: dict[str, Any]) -> tuple[str, ...]:
    """The fields of ``defaults`` that ``body`` sets to something other than their default (and null):
    a field at its default asks for nothing, so dropping it is no loss to report."""
    return tuple(sorted(name for name, default in defaults.items()
                        if body.get(name) is not None and body[name] not in default))


def untranslatable(reasons: Sequence[str], api: str, why: str) -> str:
    """``reasons`` (quoted fields, tools...) as one sentence: they need a provider speaking ``api``."""
    if not reasons:
        return ""
    verb = "needs" if len(reasons) == 1 else "need"
    return f"{', '.join(reasons)} {verb} a provider that speaks the {api} itself ({why})"
