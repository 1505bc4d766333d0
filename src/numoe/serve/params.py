"""Request bodies checked field by field: a bad one is an `ApiError` (HTTP status, OpenAI's
error shape: message, type, param), never a 500.

Unknown fields are ignored, as OpenAI-compatible servers do (clients send their own)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..sampling import SamplingParams

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOPS = 16


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type, self.code, self.headers = type_, code, headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def get_int(body: dict, name: str, default, low=None, high=None):
    v = body.get(name, None)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{name}' must be an integer, got {_type_name(v)}", name)
    if (low is not None and v < low) or (high is not None and v > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise bad(f"'{name}' must be {rng}, got {v}", name)
    return v


def get_float(body: dict, name: str, default, low=None, high=None, low_open=False):
    v = body.get(name, None)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise bad(f"'{name}' must be a finite number, got {_type_name(v)}", name)
    if (low is not None and (v < low or (low_open and v == low))) or (
        high is not None and v > high
    ):
        lo = f"> {low}" if low_open else f">= {low}"
        rng = lo if high is None else f"{lo} and <= {high}"
        raise bad(f"'{name}' must be {rng}, got {v}", name)
    return float(v)


def get_bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name, None)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be a boolean, got {_type_name(v)}", name)
    return v


def get_stops(body: dict) -> list[str]:
    v = body.get("stop", None)
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise bad("'stop' must be a string or a list of strings", "stop")
    if len(v) > MAX_STOPS:
        raise bad(f"'stop' may hold at most {MAX_STOPS} strings, got {len(v)}", "stop")
    return [s for s in v if s]


@dataclass
class Generation:
    """What every generating endpoint asks: limits, sampling, stops, streaming."""

    max_tokens: int | None
    sampling: SamplingParams
    stops: list[str]
    stream: bool
    include_usage: bool
    logprobs: int | None
    ignore_eos: bool


def generation(body: dict, defaults: SamplingParams, chat: bool) -> Generation:
    """The fields OpenAI's chat and completions endpoints share (and llama-server's extras:
    top_k, min_p, repeat_penalty, repeat_last_n, ignore_eos)."""
    n = get_int(body, "n", 1, 1)
    if n != 1:
        raise bad("only n = 1 is supported", "n")
    max_tokens = get_int(body, "max_tokens", None, 1)
    if chat:
        max_tokens = get_int(body, "max_completion_tokens", max_tokens, 1)
    s = SamplingParams(
        temperature=get_float(body, "temperature", defaults.temperature, 0.0, 100.0),
        top_k=get_int(body, "top_k", defaults.top_k, 0),
        top_p=get_float(body, "top_p", defaults.top_p, 0.0, 1.0),
        min_p=get_float(body, "min_p", defaults.min_p, 0.0, 1.0),
        repeat_penalty=get_float(body, "repeat_penalty", defaults.repeat_penalty, 0.0, 100.0, True),
        repeat_last_n=get_int(body, "repeat_last_n", defaults.repeat_last_n, -1),
        frequency_penalty=get_float(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=get_float(body, "presence_penalty", 0.0, -2.0, 2.0),
        seed=get_int(body, "seed", defaults.seed, -(2**63), 2**64 - 1),
    )
    stream = get_bool(body, "stream", False)
    opts = body.get("stream_options", None)
    if opts is not None and not isinstance(opts, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    include_usage = get_bool(opts or {}, "include_usage", False)
    if chat:
        lp = get_bool(body, "logprobs", False)
        top = get_int(body, "top_logprobs", None, 0, 20)
        if top is not None and not lp:
            raise bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        logprobs = (top or 0) if lp else None
    else:
        logprobs = get_int(body, "logprobs", None, 0, 20)
    return Generation(
        max_tokens=max_tokens,
        sampling=s,
        stops=get_stops(body),
        stream=stream,
        include_usage=include_usage,
        logprobs=logprobs,
        ignore_eos=get_bool(body, "ignore_eos", False),
    )


def content_text(content: Any, i: int) -> str:
    """A message's content: a string, or a list of parts of which text parts are joined."""
    param = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad(f"{param}[{j}] must be an object with a 'type'", param)
            if part["type"] != "text":
                raise bad(f"{param}[{j}]: content of type {part['type']!r} is not supported "
                          "(text only)", param)  # fmt: skip
            if not isinstance(part.get("text"), str):
                raise bad(f"{param}[{j}].text must be a string", param)
            out.append(part["text"])
        return "".join(out)
    raise bad(f"{param} must be a string or a list of content parts", param)


def messages(body: dict) -> list[dict]:
    """The chat messages as the template takes them: role and string content."""
    msgs = body.get("messages", None)
    if msgs is None:
        raise bad("'messages' is required", "messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}"[:300],
                      f"messages[{i}].role")  # fmt: skip
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        msg = {"role": role, "content": content_text(content, i)}
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def prompt(body: dict, n_vocab: int) -> str | list[int]:
    """/v1/completions' prompt: a string or a list of token ids (one prompt only)."""
    p = body.get("prompt", None)
    if p is None:
        raise bad("'prompt' is required", "prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        if not all(0 <= t < n_vocab for t in p):
            raise bad(f"'prompt' token ids must be in [0, {n_vocab})", "prompt")
        return p
    raise bad("'prompt' must be a string or a non-empty list of token ids (one prompt)", "prompt")
