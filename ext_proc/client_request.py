"""Parses and validates what a client sends, in the OpenAI API's shapes.

Each handler accepts its OpenAI body and turns it into the canonical request
the translators work from. The legacy completion handler also accepts the
original Hapax shapes (``input`` or ``messages``) and becomes a chat request,
because the chat API is the one every provider serves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ext_proc.errors import GatewayError, invalid
from ext_proc.inbound import messages_request, responses_request
from ext_proc.inbound.translated import Translated
from hapax import wire
from hapax.wire import Handler

# The client APIs besides OpenAI's, each with what makes the canonical chat of its requests.
INBOUND: dict[str, Callable[[dict[str, Any]], Translated]] = {
    Handler.MESSAGES: messages_request.chat_body, Handler.RESPONSES: responses_request.chat_body}
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
AUTO_MODELS = frozenset({"", wire.AUTO_MODEL})
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
ENCODING_FORMATS = ("float", "base64")
# The legacy completions fields a chat cannot express -> (whether a value asks for something,
# what a chat cannot do).
LEGACY_ONLY: dict[str, tuple[Callable[[Any], bool], str]] = {
    "suffix": (lambda v: v not in (None, ""), "insert text before a suffix"),
    "echo": (lambda v: v not in (None, False), "echo the prompt"),
    "best_of": (lambda v: v not in (None, 1), "pick the best of several answers"),
    "logprobs": (lambda v: v is not None and v is not False, "return log probabilities"),  # 0 asks too
}


@dataclass(frozen=True)
class ClientRequest:
    handler: Handler        # chat | completion | embeddings | count_tokens (a prompt to count)
    model: str | None       # as requested; None or "auto" = preference order
    stream: bool
    body: dict[str, Any]    # canonical OpenAI body: chat completion or embeddings
    # The body in the client's own API, when a provider type speaks that API itself (Anthropic
    # the Messages API, OpenAI the Responses API) and so takes it as it came (Translator.native_request).
    as_sent: dict[str, Any] | None = None
    # What in ``as_sent`` the canonical body cannot carry ("" if nothing): only a provider that
    # speaks the client's API itself can serve the request.
    untranslatable: str = ""
    # The fields of ``as_sent`` the canonical body leaves out: a translated attempt reports them.
    dropped: tuple[str, ...] = ()

    @classmethod
    def as_read(cls, handler: Handler, model: str, stream: bool, include_usage: bool) -> ClientRequest:
        """A request known only by what Envoy read of its body (the model lane's route)."""
        body: dict[str, Any] = {"model": model, "stream": stream}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        return cls(handler, model, stream, body)

    @property
    def include_usage(self) -> bool:
        """The client asked for the usage chunk at the end of its stream."""
        options = self.body.get("stream_options")
        return self.stream and isinstance(options, dict) and options.get("include_usage") is True


def parse(handler: str, raw: bytes) -> ClientRequest:
    body = _json_object(raw)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid(f"'model' must be a string, got {_kind(model)}.", param="model")
    if handler == Handler.CHAT:
        _check_chat(body)
        return ClientRequest(Handler.CHAT, model, _stream(body), body)
    if handler == Handler.COMPLETION:
        return _completion(body, model)
    if handler == Handler.EMBEDDINGS:
        _check_embeddings(body)
        return ClientRequest(Handler.EMBEDDINGS, model, False, body)
    if handler == Handler.COUNT_TOKENS:  # Anthropic counts it as it came; the gateway estimates the chat
        translated = messages_request.count_body(body)
        return ClientRequest(Handler.COUNT_TOKENS, translated.chat["model"], False, translated.chat, body,
                             translated.untranslatable)
    if handler in INBOUND:  # another API's shape in: kept as it came for its own provider, a chat for the rest
        translated = INBOUND[handler](body)
        chat = translated.chat
        return ClientRequest(Handler.CHAT, chat["model"], bool(chat.get("stream")), chat, body,
                             translated.untranslatable, translated.dropped)
    raise GatewayError(405, f"handler {handler!r} takes no request body", code="method_not_allowed")


# No API field needs an integer longer than this; Python refuses over 4300 digits anyway.
MAX_INT_DIGITS = 100
# No API body nests deeper (a JSON schema in a tool is the deepest); Python's parser recurses,
# and every later walk of the body (translators, json.dumps) would too.
MAX_DEPTH = 100


def _refuse_constant(name: str) -> float:
    # Python's json reads NaN, Infinity and -Infinity, which JSON has not; a provider would get them back.
    raise invalid(f"The request body is not valid JSON: {name} is not a JSON number.", code="invalid_json")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400: a provider would be sent Infinity
        raise invalid(f"The number {text[:40]} is too large.", code="invalid_value")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise invalid(f"An integer of {len(text.lstrip('-'))} digits is too large "
                      f"(at most {MAX_INT_DIGITS}).", code="invalid_value")
    return int(text)


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise invalid("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise invalid(f"The request body is not valid JSON: {err}.", code="invalid_json") from None
    except RecursionError:
        raise invalid(f"The request body is nested too deeply (at most {MAX_DEPTH} levels).",
                      code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid(f"The request body must be a JSON object, got {_kind(body)}.", code="invalid_json")
    _check_depth(body)
    _check_unicode(raw, body)
    return body


def _check_depth(body: dict[str, Any]) -> None:
    """Iterative, so that the check cannot itself overflow the stack."""
    pending: list[tuple[Any, int]] = [(body, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise invalid(f"The request body is nested too deeply (at most {MAX_DEPTH} levels).", code="invalid_json")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _check_unicode(raw: bytes, body: dict[str, Any]) -> None:
    """A lone surrogate ("\\ud800") decodes to a str no UTF-8 encoder takes: refused here, not
    when a translator re-encodes the body for its provider. Only an escaped one can exist."""
    if b"\\u" not in raw:
        return
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise invalid("The request body holds a lone UTF-16 surrogate (\\ud800-\\udfff), "
                      "which is not valid Unicode.", code="invalid_json") from None


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise invalid(f"'stream' must be a boolean, got {_kind(stream)}.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid(f"'stream_options' must be an object, got {_kind(options)}.", param="stream_options")
    return stream


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise invalid("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array.", param="messages")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid(f"'{where}' must be an object, got {_kind(msg)}.", param=where)
        role = msg.get("role")
        if role not in CHAT_ROLES:
            raise invalid(f"'{where}.role' must be one of {', '.join(sorted(CHAT_ROLES))}; got {role!r}.",
                          param=f"{where}.role")
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid(f"'{where}.content' must be a string or an array of parts, got {_kind(content)}.",
                          param=f"{where}.content")


def _check_sampling(body: dict[str, Any]) -> None:
    for key in ("max_tokens", "max_completion_tokens", "n", "seed"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise invalid(f"'{key}' must be an integer, got {_kind(value)}.", param=key)
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if value is not None and value < 1:
            raise invalid(f"'{key}' must be at least 1, got {value}.", param=key)
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise invalid(f"'{key}' must be a number, got {_kind(value)}.", param=key)
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise invalid("'stop' must be a string or an array of strings.", param="stop")


def _check_chat(body: dict[str, Any]) -> None:
    _check_messages(body.get("messages"))
    _check_sampling(body)
    _check_options(body)
    _stream(body)


def _check_options(body: dict[str, Any]) -> None:
    """Options each translator maps its own way; their shape is checked once, here."""
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise invalid(f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORTS)}; got {effort!r}.",
                      param="reasoning_effort")
    for key in ("user", "safety_identifier"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise invalid(f"'{key}' must be a string, got {_kind(body[key])}.", param=key)
    _check_response_format(body.get("response_format"))
    _check_functions(body.get("functions"), body.get("function_call"))


def _check_response_format(fmt: Any) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in RESPONSE_FORMATS:
        raise invalid(f"'response_format' must be an object whose type is one of {', '.join(RESPONSE_FORMATS)}.",
                      param="response_format")
    if fmt["type"] != "json_schema":
        return
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"] \
            or not isinstance(spec.get("schema", {}), dict):
        raise invalid("'response_format.json_schema' must be {name, schema?, description?, strict?}, "
                      "with schema an object.", param="response_format.json_schema")


def _check_functions(functions: Any, function_call: Any) -> None:
    """The legacy function calling fields."""
    if functions is not None and not isinstance(functions, list):
        raise invalid(f"'functions' must be an array, got {_kind(functions)}.", param="functions")
    for i, fn in enumerate(functions or []):
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise invalid(f"'functions[{i}]' must be an object with a name.", param=f"functions[{i}]")
    if function_call is not None and function_call not in ("auto", "none") and not (
            isinstance(function_call, dict) and isinstance(function_call.get("name"), str)):
        raise invalid("'function_call' must be 'auto', 'none' or {name}.", param="function_call")


def _completion(body: dict[str, Any], model: str | None) -> ClientRequest:
    """Legacy completions, and the original Hapax ``input``/``messages`` shapes."""
    if "messages" in body:
        messages = body["messages"]
        _check_messages(messages)
    elif "prompt" in body:
        messages = [{"role": "user", "content": _prompt_text(body["prompt"], "prompt")}]
    elif "input" in body:
        messages = [{"role": "user", "content": _prompt_text(body["input"], "input")}]
    else:
        raise invalid("Missing required parameter: 'prompt' (or 'input' or 'messages').",
                      param="prompt", code="missing_required_parameter")
    _check_sampling(body)
    _refuse_legacy_only(body)
    chat = {k: v for k, v in body.items() if k not in ("prompt", "input", "messages", *LEGACY_ONLY)}
    chat["messages"] = messages
    return ClientRequest(Handler.COMPLETION, model, _stream(body), chat)


def _refuse_legacy_only(body: dict[str, Any]) -> None:
    """The legacy fields a chat cannot express, at a value that asks for something: a 400 naming it.

    Every provider, OpenAI included, is sent a legacy completion as a chat, so none of
    them could honour these; their defaults (left out, null, false, 1) pass.
    """
    for key, (asks, what) in LEGACY_ONLY.items():
        if asks(body.get(key)):
            raise invalid(f"'{key}' is not supported: the gateway serves completions as chat completions, "
                          f"which cannot {what}.", param=key)


def _prompt_text(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        raise invalid(f"'{key}' with several prompts is not supported; send one request per prompt.",
                      param=key)
    raise invalid(f"'{key}' must be a string, got {_kind(value)}.", param=key)


def _check_embeddings(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is None:
        raise invalid("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    ok = isinstance(value, str) or (isinstance(value, list) and value and all(
        isinstance(v, (str, int)) and not isinstance(v, bool) or (
            isinstance(v, list) and all(isinstance(t, int) for t in v)) for v in value))
    if not ok:
        raise invalid("'input' must be a string, an array of strings, or an array of token arrays.",
                      param="input")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise invalid("'dimensions' must be an integer of at least 1.", param="dimensions")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ENCODING_FORMATS:
        raise invalid(f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}; got {fmt!r}.",
                      param="encoding_format")
