"""OpenAI and OpenAI-compatible servers: the request keeps its shape."""

from __future__ import annotations

import json

from ext_proc.client_request import ClientRequest
from ext_proc.providers.base import ProviderRequest, Translator
from ext_proc.runtime import Provider

PATHS = {"chat": "/chat/completions", "completion": "/chat/completions", "embeddings": "/embeddings"}


class OpenAITranslator(Translator):
    type = "openai"
    handlers = frozenset(PATHS)
    answers_in_openai_shape = True

    def request(self, req: ClientRequest, provider: Provider) -> ProviderRequest:
        body = dict(req.body)
        body["model"] = provider.model
        if req.stream:
            # Token usage is only known on a stream if the last chunk carries it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        headers = {"authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}
        return ProviderRequest(
            path=provider.base_path + PATHS[req.handler],
            body=json.dumps(body, separators=(",", ":")).encode(),
            set_headers=headers,
        )

    def health_probe(self, provider: Provider) -> ProviderRequest:
        headers = {"authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}
        return ProviderRequest(path=provider.base_path + "/models", body=b"", set_headers=headers)
