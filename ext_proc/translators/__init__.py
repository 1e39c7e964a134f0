"""Registry of provider translators, by provider ``type``."""

from __future__ import annotations

from ext_proc.translators.anthropic import AnthropicTranslator
from ext_proc.translators.base import ProviderRequest, ResponseStage, Translator
from ext_proc.translators.ollama import OllamaTranslator
from ext_proc.translators.openai import OpenAITranslator

TRANSLATORS: dict[str, Translator] = {
    t.type: t for t in (OpenAITranslator(), AnthropicTranslator(), OllamaTranslator())
}


def translator_for(provider_type: str) -> Translator:
    return TRANSLATORS[provider_type]


__all__ = ["ProviderRequest", "ResponseStage", "Translator", "TRANSLATORS", "translator_for"]
