"""The OpenAI request bodies checked and turned into engine settings, and the text of a choice as its
tokens arrive (incremental decoding, stop strings). No HTTP here: errors are :class:`ApiError`."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from codex_jax.serve.engine import TOP_LOGPROBS

MAX_N = 16
MAX_STOPS = 8


class ApiError(Exception):
    """An OpenAI-style error: HTTP ``status``, ``message``, the ``param`` at fault and a ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass
class Settings:
    """What a completion or chat request asks of each choice."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    n: int
    stop: list[str]
    seed: int | None
    logprobs: int | None  # top alternatives per token (0..5), None: no logprobs
    echo: bool
    stream: bool
    include_usage: bool


def _number(body: dict, name: str, default, low: float, high: float, integer: bool = False):
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"'{name}' must be {kind}, got {value!r}", name, "invalid_type")
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be in [{low}, {high}], got {value!r}", name, "invalid_value")
    return value


def _bool(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be a boolean, got {value!r}", name, "invalid_type")
    return value


def settings(body: Any, *, chat: bool, context: int) -> Settings:
    """The sampling settings of a request body, or ApiError(400) naming the bad parameter."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    limit = body.get("max_completion_tokens") if chat else None
    name = "max_completion_tokens" if limit is not None else "max_tokens"
    max_tokens = _number(body, name, context if chat else 16, 0, 1 << 30, integer=True)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOPS:
        raise ApiError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOPS}", "stop")
    if chat:
        logprobs = _number(body, "top_logprobs", 0, 0, TOP_LOGPROBS, integer=True)
        logprobs = logprobs if _bool(body, "logprobs") else None
        echo = False
    else:
        logprobs = _number(body, "logprobs", None, 0, TOP_LOGPROBS, integer=True)
        echo = _bool(body, "echo")
    top_k = _number(body, "top_k", 0, -1, 1 << 30, integer=True)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    return Settings(
        max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 1.0, 0.0, 2.0)),
        top_p=float(_number(body, "top_p", 1.0, 0.0, 1.0)),
        top_k=max(0, top_k),
        n=_number(body, "n", 1, 1, MAX_N, integer=True),
        stop=stop,
        seed=_number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True),
        logprobs=logprobs,
        echo=echo,
        stream=_bool(body, "stream"),
        include_usage=bool(options.get("include_usage", False)),
    )


def completion_prompts(body: dict, tokenizer, context: int) -> list[list[int]]:
    """The ``prompt`` of a completion request as token id lists (a string, a list of strings, a list
    of ids or a list of id lists)."""
    prompt = body.get("prompt")
    vocab = tokenizer.vocab_size

    def ids(value) -> list[int]:
        if isinstance(value, str):
            out = list(tokenizer.encode(value))
            if not out:
                out = [_prefix_id(tokenizer)]
            return out
        if isinstance(value, list) and value and all(_token_id(v, vocab) for v in value):
            return list(value)
        raise ApiError(400, "'prompt' must be a string, a list of strings or of token ids", "prompt")

    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        prompts = [ids(p) for p in prompt]
    else:
        prompts = [ids(prompt)]
    for p in prompts:
        check_length(p, context, "prompt")
    return prompts


def chat_turns(body: dict) -> list[tuple[str, str]]:
    """The ``messages`` of a chat request as ``(role, content)`` turns."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] needs a role: system, user or assistant", "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, f"messages[{i}]: only text content parts are served", "messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", "messages")
        turns.append((message["role"], content))
    return turns


def check_length(prompt: list[int], context: int, param: str) -> None:
    """ApiError(400) when ``prompt`` is longer than the context."""
    if len(prompt) > context:
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens, however the {param} has "
            f"{len(prompt)} tokens. Please shorten it.",
            param,
            "context_length_exceeded",
        )


def _prefix_id(tokenizer) -> int:
    for name in ("bos_id", "eos_id"):
        value = getattr(tokenizer, name, None)
        if value is not None and value >= 0:
            return int(value)
    return 0


def _token_id(value, vocab: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab


class Text:
    """A choice's text as its tokens arrive: what may be sent now (held back while it may be the start
    of a stop string or a partly decoded character) and whether a stop string has ended it."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.text = ""  # the final text so far (cut at a stop string)
        self.sent = 0  # characters of it already handed out
        self.stopped = False
        self._hold = max((len(s) for s in stop), default=1) - 1

    def add(self, token: int) -> None:
        """Appends a token (ignored once stopped)."""
        if self.stopped:
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        for s in self.stop:
            at = text.find(s, max(0, len(self.text) - len(s)))
            if at >= 0:
                text, self.stopped = text[:at], True
        self.text = text

    def ready(self, final: bool) -> str:
        """The text not yet handed out that is safe to send (all of it when ``final``)."""
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._hold
            while end > self.sent and self.text[end - 1] == "\ufffd":
                end -= 1
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : end], end
        return piece
