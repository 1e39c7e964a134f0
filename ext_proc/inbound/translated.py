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


def untranslatable(reasons: Sequence[str], api: str, why: str) -> str:
    """``reasons`` (quoted fields, tools...) as one sentence: they need a provider speaking ``api``."""
    if not reasons:
        return ""
    verb = "needs" if len(reasons) == 1 else "need"
    return f"{', '.join(reasons)} {verb} a provider that speaks the {api} itself ({why})"
