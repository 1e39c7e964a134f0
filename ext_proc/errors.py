"""Errors that end a request at the gateway, in OpenAI's error shape."""

from __future__ import annotations

import json
from typing import Any


def error_json(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON, whoever produced the error."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class GatewayError(Exception):
    """A request Hapax answers itself, without (or instead of) a provider."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> bytes:
        return json.dumps(error_json(self.message, self.type, self.code, self.param)).encode()


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)
