"""OpenAI's Responses API as clients send it to Hapax (``POST /v1/responses``): its requests.

A Responses request goes two ways. A provider that speaks the Responses API itself (OpenAI's)
gets it as it came, its model aside (the translator's native request). Every other provider
gets the canonical OpenAI chat body this module makes of it (``chat_body``), and the answer
comes back through responses_answer.py: one translation core, as for Anthropic's Messages API.

Hapax keeps no responses: it is stateless. What needs state held by the provider
(``previous_response_id``, ``conversation``, an ``item_reference``, a stored ``prompt``) or a
tool run by OpenAI itself (web search, file search, ...) only the native provider can serve:
``untranslatable`` says so, and a translated attempt is refused with that reason.

Errors are OpenAI's error JSON, as the Responses API gives them.
"""

from __future__ import annotations

from typing import Any

from ext_proc.errors import invalid
from ext_proc.inbound.translated import Translated, asked, untranslatable

ROLES = ("user", "assistant", "system", "developer")
TOOL_CHOICES = ("auto", "none", "required")
FORMATS = ("text", "json_object", "json_schema")
# Items an input may hold besides messages that a chat can carry, and those a chat cannot.
PROVIDER_HELD = frozenset({"item_reference"})
# Request fields, by what a translated request does with them.
MAPPED = frozenset({"model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens",
                    "temperature", "top_p", "stream", "parallel_tool_calls", "reasoning", "user",
                    "safety_identifier", "top_logprobs"})
# Fields that tune OpenAI's own service (storage, tiers, caching, what its events carry): a
# translated request drops them, and reports those set to ask for something (not these values).
SERVICE_ONLY: dict[str, tuple[Any, ...]] = {
    "store": (False,), "service_tier": ("auto", "default"), "truncation": ("disabled",), "include": ([],),
    "prompt_cache_key": (), "prompt_cache_retention": (), "max_tool_calls": (), "metadata": ({},),
    "stream_options": ({},)}
# Fields only a provider holding state, or running the work itself, can serve.
STATEFUL = ("previous_response_id", "conversation", "prompt", "background")
KNOWN = MAPPED | frozenset(SERVICE_ONLY) | frozenset(STATEFUL)


def chat_body(body: dict[str, Any]) -> Translated:
    """The canonical OpenAI chat body of a Responses request; a 400 for what the Responses API refuses."""
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise invalid(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("Missing required parameter: 'model'." if model is None
                      else "Invalid type for 'model': expected a string.", param="model",
                      code="missing_required_parameter" if model is None else "invalid_type")
    reasons = [f"'{name}'" for name in STATEFUL if body.get(name) not in (None, False)]
    messages = [*_instructions(body.get("instructions")), *_input(body.get("input"), reasons)]
    chat: dict[str, Any] = {"model": model, "messages": messages}
    if _flag(body, "stream"):  # the usage chunk is what response.completed's usage comes from
        chat.update(stream=True, stream_options={"include_usage": True})
    _limits(body, chat)
    _tools(body, chat, reasons)
    _text(body.get("text"), chat)
    _reasoning(body.get("reasoning"), chat)
    if "parallel_tool_calls" in body:
        chat["parallel_tool_calls"] = _flag(body, "parallel_tool_calls")
    for name in ("user", "safety_identifier"):
        if isinstance(body.get(name), str):
            chat[name] = body[name]
    if body.get("top_logprobs"):  # asks for log probabilities: a provider that cannot give them refuses
        chat.update(logprobs=True, top_logprobs=body["top_logprobs"])
    return Translated(chat, untranslatable(reasons, "Responses API", "it holds the state or runs the tool; "
                                                                    "this gateway keeps no responses"),
                      asked(body, SERVICE_ONLY))


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"Invalid type for '{name}': expected a boolean.", param=name, code="invalid_type")
    return value


def _instructions(instructions: Any) -> list[dict[str, Any]]:
    if instructions is None or instructions == "":
        return []
    if not isinstance(instructions, str):
        raise invalid("Invalid type for 'instructions': expected a string.", param="instructions",
                      code="invalid_type")
    return [{"role": "system", "content": instructions}]


def _input(items: Any, reasons: list[str]) -> list[dict[str, Any]]:
    if items is None:
        raise invalid("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise invalid("Invalid type for 'input': expected a string or an array of input items.", param="input",
                      code="invalid_type")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            _append_call(out, _function_call(item, where))
        elif kind == "function_call_output":
            out.append(_function_output(item, where))
        elif kind == "reasoning":
            continue  # the chat form has no place for it; a provider reasons again
        elif isinstance(kind, str) and (kind in PROVIDER_HELD or kind.endswith("_call")
                                        or kind.endswith("_call_output")):
            reasons.append(f"an input item of type '{kind}'")
        else:
            raise invalid(f"Invalid value for '{where}.type': {kind!r} is not an input item type.",
                          param=f"{where}.type", code="invalid_value")
    return out


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise invalid(f"Invalid value for '{where}.role': expected one of {', '.join(ROLES)}.",
                      param=f"{where}.role", code="invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": "system" if role == "developer" else role, "content": content}
    if not isinstance(content, list):
        raise invalid(f"Invalid type for '{where}.content': expected a string or an array of content parts.",
                      param=f"{where}.content", code="invalid_type")
    parts = [_part(part, role, f"{where}.content[{j}]") for j, part in enumerate(content)]
    if role == "assistant":  # a chat's assistant message holds text only
        return {"role": role, "content": "".join(part["text"] for part in parts)}
    return {"role": "system" if role == "developer" else role, "content": parts}


def _part(part: Any, role: str, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "refusal") and (kind == "input_text") != (role == "assistant"):
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            raise invalid(f"Invalid type for '{where}.text': expected a string.", param=f"{where}.text",
                          code="invalid_type")
        return {"type": "text", "text": text}
    if kind == "input_image" and role != "assistant":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise invalid(f"'{where}': an input_image needs an image_url (a file_id needs OpenAI's file store).",
                          param=f"{where}.image_url", code="invalid_value")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and role != "assistant":
        if not isinstance(part.get("file_data"), str):
            raise invalid(f"'{where}': an input_file needs file_data (a file_id or file_url needs OpenAI's "
                          "file store).", param=f"{where}.file_data", code="invalid_value")
        return {"type": "file", "file": {"file_data": part["file_data"],
                                         "filename": part.get("filename") or "document"}}
    raise invalid(f"Invalid value for '{where}.type': a {role} message cannot hold a {kind!r} part.",
                  param=f"{where}.type", code="invalid_value")


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    for field, value in (("call_id", call_id), ("name", name), ("arguments", arguments)):
        if not isinstance(value, str):
            raise invalid(f"Missing required parameter: '{where}.{field}'.", param=f"{where}.{field}",
                          code="missing_required_parameter")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _append_call(out: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """Calls made in one turn are one assistant message's tool calls, with the words said before them."""
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        last["content"] = last.get("content") or None
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _function_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str):
        raise invalid(f"Missing required parameter: '{where}.call_id'.", param=f"{where}.call_id",
                      code="missing_required_parameter")
    if isinstance(output, list):  # text parts; a chat's tool message holds text
        output = "".join(p.get("text", "") for p in output if isinstance(p, dict) and p.get("type") == "input_text")
    if not isinstance(output, str):
        raise invalid(f"Invalid type for '{where}.output': expected a string.", param=f"{where}.output",
                      code="invalid_type")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def _limits(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tokens = body.get("max_output_tokens")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 16:
            raise invalid("Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16.",
                          param="max_output_tokens", code="integer_below_min_value")
        chat["max_completion_tokens"] = tokens
    for name, top in (("temperature", 2), ("top_p", 1)):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= top:
            raise invalid(f"Invalid '{name}': expected a number between 0 and {top}.", param=name,
                          code="invalid_value")
        chat[name] = value


def _tools(body: dict[str, Any], chat: dict[str, Any], reasons: list[str]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("Invalid type for 'tools': expected an array.", param="tools", code="invalid_type")
        functions = []
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind == "function":
                functions.append(_function_tool(tool, i))
            elif isinstance(kind, str):
                reasons.append(f"the '{kind}' tool")
            else:
                raise invalid(f"Missing required parameter: 'tools[{i}].type'.", param=f"tools[{i}].type",
                              code="missing_required_parameter")
        if functions:
            chat["tools"] = functions
    choice = body.get("tool_choice")
    if choice is None:
        return
    if choice in TOOL_CHOICES:
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif isinstance(choice, dict) and isinstance(choice.get("type"), str):
        reasons.append(f"tool_choice of type '{choice['type']}'")
    else:
        raise invalid("Invalid value for 'tool_choice': expected auto, none, required or a function.",
                      param="tool_choice", code="invalid_value")


def _function_tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    """A Responses function tool is flat ({type, name, parameters}); a chat's nests it under 'function'."""
    if not isinstance(tool.get("name"), str):
        raise invalid(f"Missing required parameter: 'tools[{i}].name'.", param=f"tools[{i}].name",
                      code="missing_required_parameter")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object"}}
    for field in ("description", "strict"):
        if tool.get(field) is not None:
            function[field] = tool[field]
    return {"type": "function", "function": function}


def _text(text: Any, chat: dict[str, Any]) -> None:
    if text is None:
        return
    form = text.get("format") if isinstance(text, dict) else None
    kind = form.get("type") if isinstance(form, dict) else None
    if form is not None and kind not in FORMATS:
        raise invalid(f"Invalid value for 'text.format.type': expected one of {', '.join(FORMATS)}.",
                      param="text.format.type", code="invalid_value")
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        assert isinstance(form, dict)
        if not isinstance(form.get("name"), str) or not isinstance(form.get("schema"), dict):
            raise invalid("Missing required parameter: 'text.format.name' and 'text.format.schema'.",
                          param="text.format", code="missing_required_parameter")
        schema = {k: form[k] for k in ("name", "schema", "strict", "description") if form.get(k) is not None}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    if isinstance(text, dict) and text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]


def _reasoning(reasoning: Any, chat: dict[str, Any]) -> None:
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if effort is not None:
        chat["reasoning_effort"] = effort
