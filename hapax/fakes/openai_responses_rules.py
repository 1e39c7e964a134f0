"""What the real Responses API (``POST /v1/responses``) rejects, in its own words.

Each rule answers 400 ``invalid_request_error`` with the ``param`` and ``code`` OpenAI
uses (``unknown_parameter``, ``missing_required_parameter``, ``invalid_type``,
``invalid_value``, ``integer_below_min_value``...), so a translator that sends a
chat-completions shape, or a value the real API refuses, fails against the fake too.
Only the request's shape is checked here; what the fake answers lives in
``openai_responses.py``.

The fake keeps no state, so every id that names stored state (a previous response, a
conversation, a saved prompt) is unknown to it, as an id from another project would be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, NoReturn

from .base import RequestError

# Every top-level field the official SDK's ``responses.create`` can send.
TOP_LEVEL_FIELDS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens", "temperature",
    "top_p", "stream", "stream_options", "store", "previous_response_id", "metadata", "parallel_tool_calls",
    "reasoning", "truncation", "user", "include", "service_tier", "prompt_cache_key", "prompt_cache_retention",
    "prompt_cache_options", "safety_identifier", "top_logprobs", "max_tool_calls", "background",
    "background_options", "conversation", "prompt", "context_management", "moderation", "image",
    "access_programs",
})
MIN_OUTPUT_TOKENS = 16
MAX_TOP_LOGPROBS = 20
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MAX_SAFETY_IDENTIFIER = 128
MESSAGE_ROLES = ("user", "assistant", "system", "developer")
# Content part types by who wrote the message: the model's own turns carry its output parts.
INPUT_PARTS = ("input_text", "input_image", "input_file")
OUTPUT_PARTS = ("output_text", "refusal")
# Input items the fake understands; reasoning items are accepted and ignored.
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
# Tools the real API hosts (or the client runs outside function calling): accepted as given,
# never called by the fake, which only ever calls function tools.
OTHER_TOOL_TYPES = frozenset({
    "custom", "file_search", "web_search", "web_search_2025_08_26", "web_search_preview",
    "web_search_preview_2025_03_11", "computer", "computer_use_preview", "mcp", "code_interpreter",
    "image_generation", "local_shell", "shell", "apply_patch", "namespace", "tool_search",
    "programmatic_tool_calling",
})
FUNCTION_TOOL_FIELDS = frozenset({
    "type", "name", "description", "parameters", "strict", "allowed_callers", "defer_loading",
    "output_schema", "async",
})
TOOL_CHOICE_MODES = ("none", "auto", "required")
TEXT_FORMATS = ("text", "json_object", "json_schema")
VERBOSITIES = ("low", "medium", "high")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
REASONING_SUMMARIES = ("auto", "concise", "detailed")
TRUNCATIONS = ("auto", "disabled")
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast", "ultrafast")
INCLUDABLE = (
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
)
DECIMAL_FIELDS = ("temperature", "top_p")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def check_request(body: dict[str, Any]) -> None:
    """Raises the real API's 400 for the first rule ``body`` breaks (the stored-state ones last)."""
    for key in body:
        if key not in TOP_LEVEL_FIELDS:
            _unknown(key)
    _check_model(body)
    _check_scalars(body)
    _check_enums(body)
    _check_metadata(body.get("metadata"))
    _check_stream_options(body)
    _check_text(body.get("text"))
    tools = _check_tools(body.get("tools"))
    _check_tool_choice(body.get("tool_choice"), tools)
    if "input" in body:
        _check_input(body["input"])
    _check_stored_state(body)
    if "input" not in body:
        _missing("input")


# -- the error shapes -------------------------------------------------------------------


def _reject(message: str, param: str | None, code: str | None) -> NoReturn:
    raise RequestError(400, message, param=param, code=code)


def _unknown(param: str) -> NoReturn:
    _reject(f"Unknown parameter: '{param}'.", param, "unknown_parameter")


def _missing(param: str) -> NoReturn:
    _reject(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _wrong_type(param: str, expected: str, value: Any) -> NoReturn:
    _reject(f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
            param, "invalid_type")


def _bad_value(param: str, value: Any, supported: Iterable[str]) -> NoReturn:
    names = [f"'{name}'" for name in supported]
    listed = ", ".join(names[:-1]) + f", and {names[-1]}" if len(names) > 2 else " and ".join(names)
    _reject(f"Invalid value: '{value}'. Supported values are: {listed}.", param, "invalid_value")


def _out_of_range(param: str, value: float, bound: float, *, below: bool) -> NoReturn:
    # The field's declared type names the error, not the value's: temperature 3 is a decimal too.
    number = "decimal" if param in DECIMAL_FIELDS else "integer"
    side, sign = ("below minimum", ">=") if below else ("above maximum", "<=")
    _reject(f"Invalid '{param}': {number} {side} value. Expected a value {sign} {_num(bound)}, "
            f"but got {_num(value)} instead.", param, f"{number}_{'below_min' if below else 'above_max'}_value")


def _too_long(param: str, value: str, limit: int) -> NoReturn:
    _reject(f"Invalid '{param}': string too long. Expected a string with maximum length {limit}, "
            f"but got a string with length {len(value)} instead.", param, "string_above_max_length")


def _kind(value: Any) -> str:
    """How OpenAI's validator names a JSON value's type in its messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _num(value: float) -> str:
    return json.dumps(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- top-level fields ---------------------------------------------------------------------


def _check_model(body: dict[str, Any]) -> None:
    if "model" not in body or body["model"] is None:
        _missing("model")
    if not isinstance(body["model"], str):
        _wrong_type("model", "a string", body["model"])


def _check_scalars(body: dict[str, Any]) -> None:
    for name in ("stream", "store", "background", "parallel_tool_calls"):
        _expect(body, name, isinstance(body.get(name), bool), "a boolean")
    for name in ("instructions", "previous_response_id", "user", "prompt_cache_key", "safety_identifier"):
        _expect(body, name, isinstance(body.get(name), str), "a string")
    for name in ("max_output_tokens", "top_logprobs", "max_tool_calls"):
        _expect(body, name, _is_int(body.get(name)), "an integer")
    for name in DECIMAL_FIELDS:
        _expect(body, name, _is_number(body.get(name)), "a decimal")
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1)
    _check_range(body, "max_output_tokens", MIN_OUTPUT_TOKENS, None)
    _check_range(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    _check_range(body, "max_tool_calls", 1, None)
    identifier = body.get("safety_identifier")
    if identifier is not None and len(identifier) > MAX_SAFETY_IDENTIFIER:
        _too_long("safety_identifier", identifier, MAX_SAFETY_IDENTIFIER)


def _expect(body: dict[str, Any], name: str, ok: bool, expected: str) -> None:
    # Every optional field may also be sent as null, which means "the default".
    if body.get(name) is not None and not ok:
        _wrong_type(name, expected, body[name])


def _check_range(body: dict[str, Any], name: str, low: float, high: float | None) -> None:
    value = body.get(name)
    if value is None:
        return
    if value < low:
        _out_of_range(name, value, low, below=True)
    if high is not None and value > high:
        _out_of_range(name, value, high, below=False)


def _check_enums(body: dict[str, Any]) -> None:
    for name, supported in (("truncation", TRUNCATIONS), ("service_tier", SERVICE_TIERS)):
        value = body.get(name)
        if value is not None and value not in supported:
            _bad_value(name, value, supported)
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list):
            _wrong_type("include", "an array", include)
        for index, value in enumerate(include):
            if value not in INCLUDABLE:
                _bad_value(f"include[{index}]", value, INCLUDABLE)
    _check_reasoning(body.get("reasoning"))


def _check_reasoning(reasoning: Any) -> None:
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        _wrong_type("reasoning", "an object", reasoning)
    for key, supported in (("effort", REASONING_EFFORTS), ("summary", REASONING_SUMMARIES),
                           ("generate_summary", REASONING_SUMMARIES)):
        value = reasoning.get(key)
        if value is not None and value not in supported:
            _bad_value(f"reasoning.{key}", value, supported)


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        _wrong_type("metadata", "an object", metadata)
    if len(metadata) > MAX_METADATA_PAIRS:
        _reject(f"Invalid 'metadata': too many properties. Expected an object with at most "
                f"{MAX_METADATA_PAIRS} properties, but got an object with {len(metadata)} properties instead.",
                "metadata", "object_above_max_properties")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            _too_long(f"metadata.{key}", key, MAX_METADATA_KEY)
        if not isinstance(value, str):
            _wrong_type(f"metadata.{key}", "a string", value)
        if len(value) > MAX_METADATA_VALUE:
            _too_long(f"metadata.{key}", value, MAX_METADATA_VALUE)


def _check_stream_options(body: dict[str, Any]) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        _wrong_type("stream_options", "an object", options)
    if body.get("stream") is not True:
        _reject("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options", None)
    # Chat's include_usage has no place here: the Responses stream always ends with usage.
    for key in options:
        if key != "include_obfuscation":
            _unknown(f"stream_options.{key}")


# -- text (the output format) ----------------------------------------------------------------


def _check_text(text: Any) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        _wrong_type("text", "an object", text)
    for key in text:
        if key not in ("format", "verbosity"):
            _unknown(f"text.{key}")
    verbosity = text.get("verbosity")
    if verbosity is not None and verbosity not in VERBOSITIES:
        _bad_value("text.verbosity", verbosity, VERBOSITIES)
    if text.get("format") is not None:
        _check_format(text["format"])


def _check_format(fmt: Any) -> None:
    if not isinstance(fmt, dict):
        _wrong_type("text.format", "an object", fmt)
    if "type" not in fmt:
        _missing("text.format.type")
    if fmt["type"] not in TEXT_FORMATS:
        _bad_value("text.format.type", fmt["type"], TEXT_FORMATS)
    if fmt["type"] != "json_schema":
        return
    # Chat's response_format nests these under "json_schema"; here they sit on the format itself.
    for required in ("name", "schema"):
        if required not in fmt:
            _missing(f"text.format.{required}")
    if not isinstance(fmt["name"], str) or not _NAME.match(fmt["name"]):
        _pattern("text.format.name", fmt["name"])
    if not isinstance(fmt["schema"], dict):
        _wrong_type("text.format.schema", "an object", fmt["schema"])
    for key in fmt:
        if key not in ("type", "name", "schema", "strict", "description"):
            _unknown(f"text.format.{key}")
    if fmt.get("strict") is True:
        _check_strict_schema(fmt["schema"], f"Invalid schema for response_format '{fmt['name']}'",
                             "text.format.schema", "invalid_json_schema")


def _pattern(param: str, value: Any) -> NoReturn:
    _reject(f"Invalid '{param}': string does not match pattern. Expected a string that matches the pattern "
            f"'{_NAME.pattern}'.", param, "invalid_value")


def _check_strict_schema(schema: dict[str, Any], what: str, param: str, code: str,
                         context: tuple[str, ...] = ()) -> None:
    """Strict mode's documented demands on every object: closed, with every property required."""
    if schema.get("type") == "object":
        properties = _dict_or_empty(schema.get("properties"))
        if schema.get("additionalProperties") is not False:
            _reject(f"{what}: In context={context}, 'additionalProperties' is required to be supplied "
                    "and to be false.", param, code)
        required = schema["required"] if isinstance(schema.get("required"), list) else []
        absent = [key for key in properties if key not in required]
        if absent:
            _reject(f"{what}: In context={context}, 'required' is required to be supplied and to be an array "
                    f"including every key in properties. Missing '{absent[0]}'.", param, code)
        for key, inner in properties.items():
            if isinstance(inner, dict):
                _check_strict_schema(inner, what, param, code, (*context, "properties", key))
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        _check_strict_schema(schema["items"], what, param, code, (*context, "items"))


def _dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# -- tools and tool_choice ------------------------------------------------------------------------


def _check_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        _wrong_type("tools", "an array", tools)
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            _wrong_type(where, "an object", tool)
        if "type" not in tool:
            _missing(f"{where}.type")
        if tool["type"] == "function":
            _check_function_tool(tool, where)
        elif not isinstance(tool["type"], str) or tool["type"] not in OTHER_TOOL_TYPES:
            _bad_value(f"{where}.type", tool["type"], ["function", *sorted(OTHER_TOOL_TYPES)])
    return tools


def _check_function_tool(tool: dict[str, Any], where: str) -> None:
    # The name is looked for first: a chat-shaped tool ({"type", "function": {...}}) gets
    # "Missing required parameter: 'tools[0].name'", as from the real API.
    if "name" not in tool:
        _missing(f"{where}.name")
    if not isinstance(tool["name"], str) or not _NAME.match(tool["name"]):
        _pattern(f"{where}.name", tool["name"])
    for key in tool:
        if key not in FUNCTION_TOOL_FIELDS:
            _unknown(f"{where}.{key}")
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        _wrong_type(f"{where}.parameters", "an object", parameters)
    if tool.get("strict") is not None and not isinstance(tool["strict"], bool):
        _wrong_type(f"{where}.strict", "a boolean", tool["strict"])
    if tool.get("description") is not None and not isinstance(tool["description"], str):
        _wrong_type(f"{where}.description", "a string", tool["description"])
    if tool.get("strict") is True and parameters is not None:
        _check_strict_schema(parameters, f"Invalid schema for function '{tool['name']}'",
                             f"{where}.parameters", "invalid_function_parameters")


def _check_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICE_MODES:
            _bad_value("tool_choice", choice, TOOL_CHOICE_MODES)
        return
    if not isinstance(choice, dict):
        _wrong_type("tool_choice", "a string or an object", choice)
    if "type" not in choice:
        _missing("tool_choice.type")
    if choice["type"] != "function":
        return  # allowed_tools and the hosted tools' choices: the fake calls no hosted tool
    if "name" not in choice:
        _missing("tool_choice.name")
    names = [tool["name"] for tool in tools if tool["type"] == "function"]
    if choice["name"] not in names:
        _reject(f"Tool choice 'function' with name '{choice['name']}' not found in 'tools' parameter.",
                "tool_choice", None)


# -- input ------------------------------------------------------------------------------------------


def item_type(item: dict[str, Any]) -> Any:
    """An input item's type: a bare ``{role, content}`` is a message."""
    return item.get("type", "message" if "role" in item else None)


def _check_input(value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        _wrong_type("input", "a string or an array", value)
    for index, item in enumerate(value):
        _check_item(item, f"input[{index}]")
    _check_call_pairing(value)


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        _wrong_type(where, "an object", item)
    kind = item_type(item)
    if kind is None:
        _missing(f"{where}.type")
    if kind not in ITEM_TYPES:
        _bad_value(f"{where}.type", kind, ITEM_TYPES)
    if kind == "message":
        _check_message(item, where)
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            _required_string(item, key, where)
    elif kind == "function_call_output":
        _required_string(item, "call_id", where)
        if "output" not in item:
            _missing(f"{where}.output")
        if not isinstance(item["output"], (str, list)):
            _wrong_type(f"{where}.output", "a string or an array", item["output"])


def _required_string(item: dict[str, Any], key: str, where: str) -> None:
    if key not in item:
        _missing(f"{where}.{key}")
    if not isinstance(item[key], str):
        _wrong_type(f"{where}.{key}", "a string", item[key])


def _check_message(item: dict[str, Any], where: str) -> None:
    if "role" not in item:
        _missing(f"{where}.role")
    if item["role"] not in MESSAGE_ROLES:
        _bad_value(f"{where}.role", item["role"], MESSAGE_ROLES)
    if "content" not in item:
        _missing(f"{where}.content")
    content = item["content"]
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        _wrong_type(f"{where}.content", "a string or an array", content)
    allowed = OUTPUT_PARTS if item["role"] == "assistant" else INPUT_PARTS
    for index, part in enumerate(content):
        _check_part(part, f"{where}.content[{index}]", allowed)


def _check_part(part: Any, where: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(part, dict):
        _wrong_type(where, "an object", part)
    if "type" not in part:
        _missing(f"{where}.type")
    if part["type"] not in allowed:
        _bad_value(f"{where}.type", part["type"], allowed)
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        _required_string(part, "text", where)
    elif kind == "refusal":
        _required_string(part, "refusal", where)
    elif kind == "input_image" and part.get("image_url") is None and part.get("file_id") is None:
        _missing(f"{where}.image_url")
    elif kind == "input_file" and not any(part.get(k) is not None for k in ("file_id", "file_data", "file_url")):
        _missing(f"{where}.file_id")


def _check_call_pairing(items: list[dict[str, Any]]) -> None:
    """Each output answers a call made before it, and each call is answered (the real API's wording)."""
    called: list[str] = []
    answered = set()
    for item in items:
        if item_type(item) == "function_call":
            called.append(item["call_id"])
        elif item_type(item) == "function_call_output":
            if item["call_id"] not in called:
                _reject(f"No tool call found for function call output with call_id {item['call_id']}.",
                        "input", None)
            answered.add(item["call_id"])
    for call_id in called:
        if call_id not in answered:
            _reject(f"No tool output found for function call {call_id}.", "input", None)


# -- ids of stored state: none exist in a fake that keeps nothing -------------------------------------


def _check_stored_state(body: dict[str, Any]) -> None:
    previous = body.get("previous_response_id")
    if previous is not None:
        _reject(f"Previous response with id '{previous}' not found.", "previous_response_id",
                "previous_response_not_found")
    conversation = body.get("conversation")
    if conversation is not None:
        conversation_id = conversation.get("id") if isinstance(conversation, dict) else conversation
        raise RequestError(404, f"Conversation with id '{conversation_id}' not found.", param="conversation")
    prompt = body.get("prompt")
    if prompt is not None:
        prompt_id = prompt.get("id") if isinstance(prompt, dict) else prompt
        raise RequestError(404, f"Prompt with id '{prompt_id}' not found.", param="prompt")
    if body.get("background") is True:
        # Not the real API's behaviour: it queues the response for GET /v1/responses/{id}, which
        # a fake without state cannot serve. Refusing loudly beats answering as if in the foreground.
        _reject("This fake keeps no responses, so it cannot run one in the background; send "
                "background: false.", "background", None)
