"""The OpenAI-compatible HTTP API over an :class:`~codex_jax.serve.engine.Engine` (a Starlette app).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.
Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` bodies; with an API key every
route but ``/health`` needs ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from codex_jax.serve.engine import Done, Engine, QueueFull, Request, Token
from codex_jax.serve.protocol import (
    ApiError,
    Settings,
    Text,
    chat_turns,
    check_length,
    completion_prompts,
    settings,
)
from codex_jax.tokenizers.chat import RenderError, conversation_prompt, end_of_turn_ids


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class _Choice:
    """One choice of a response: its engine request and the text and logprobs gathered so far."""

    def __init__(self, index: int, prompt: list[int], text: Text):
        self.index, self.prompt, self.text = index, prompt, text
        self.tokens: list[Token] = []
        self.done: Done | None = None
        self.request: Request | None = None
        self.reason: str | None = None


class Server:
    """The app's state: engine, tokenizer, model name, API key."""

    def __init__(self, engine: Engine, tokenizer, model_name: str, chat_template: str = "", api_key=None):
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.chat_template, self.api_key = chat_template, api_key
        self.created = int(time.time())
        eos = getattr(tokenizer, "eos_id", None)
        self.eos_ids = frozenset([eos] if eos is not None and eos >= 0 else [])
        self.end_of_turn = frozenset(end_of_turn_ids(tokenizer))

    # ------------------------------------------------------------------ routes

    async def health(self, _: HttpRequest) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.model_name, **self.engine.stats()})

    async def models(self, _: HttpRequest) -> JSONResponse:
        entry = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "codex_jax"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def completions(self, http: HttpRequest):
        return await self._handle(http, chat=False)

    async def chat_completions(self, http: HttpRequest):
        return await self._handle(http, chat=True)

    # ------------------------------------------------------------------ the work

    async def _handle(self, http: HttpRequest, chat: bool):
        try:
            body = await _json(http)
            s = settings(body, chat=chat, context=self.engine.context)
            if chat:
                try:
                    turns = chat_turns(body)
                    prompts = [conversation_prompt(self.tokenizer, turns, self.chat_template)]
                except RenderError as e:
                    raise ApiError(400, str(e), "messages") from None
                check_length(prompts[0], self.engine.context, "messages")
            else:
                prompts = completion_prompts(body, self.tokenizer, self.engine.context)
            choices, queue = self._submit(prompts, s, chat)
        except ApiError as e:
            return error_response(e)
        meta = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": self.model_name,
        }
        if s.stream:
            stream = self._stream(choices, queue, s, chat, meta)
            return StreamingResponse(stream, media_type="text/event-stream")
        try:
            await self._gather(choices, queue)
        except asyncio.CancelledError:
            _cancel(choices)
            raise
        if any(c.reason == "error" for c in choices):
            return error_response(
                ApiError(500, "a model step failed (see the server's log)", None, "engine_error")
            )
        out = [self._final_choice(c, s, chat) for c in choices]
        kind = "chat.completion" if chat else "text_completion"
        return JSONResponse({**meta, "object": kind, "choices": out, "usage": _usage(prompts, choices)})

    def _submit(self, prompts: list[list[int]], s: Settings, chat: bool):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        base_seed = secrets.randbits(31) if s.seed is None else s.seed
        choices: list[_Choice] = []
        for p, prompt in enumerate(prompts):
            for j in range(s.n):
                choice = _Choice(len(choices), prompt, Text(self.tokenizer, s.stop))

                def emit(event, index=choice.index):
                    loop.call_soon_threadsafe(queue.put_nowait, (index, event))

                choice.request = Request(
                    prompt=prompt,
                    max_tokens=s.max_tokens,
                    emit=emit,
                    temperature=s.temperature,
                    top_k=s.top_k,
                    top_p=s.top_p,
                    seed=(base_seed + p * s.n + j) % (1 << 32),
                    stop_ids=self.end_of_turn if chat else self.eos_ids,
                    prompt_logprobs=s.echo and s.logprobs is not None,
                )
                choices.append(choice)
        for i, choice in enumerate(choices):
            try:
                assert choice.request is not None
                self.engine.submit(choice.request)
            except QueueFull as e:
                self.engine.withdraw([c.request for c in choices[:i] if c.request is not None])
                raise ApiError(429, f"the server is busy ({e}); retry later", None, "queue_full") from None
            except ValueError as e:
                _cancel(choices[:i])
                raise ApiError(400, str(e), "prompt") from None
        return choices, queue

    @staticmethod
    def _take(choice: _Choice, event: Token | Done) -> bool:
        """Records one engine event of ``choice``; True when it is the end."""
        request = choice.request
        assert request is not None
        if isinstance(event, Token):
            choice.tokens.append(event)
            if event.id not in request.stop_ids:
                choice.text.add(event.id)
            if choice.text.stopped and choice.reason is None:
                choice.reason = "stop"
                request.cancel()
            return False
        choice.done = event
        if event.reason == "error":
            choice.reason = "error"
        if choice.reason is None:
            choice.reason = "stop" if event.reason == "cancelled" else event.reason
        return True

    async def _gather(self, choices: list[_Choice], queue: asyncio.Queue) -> None:
        """Takes engine events until every choice is done."""
        left = len(choices)
        while left:
            index, event = await queue.get()
            left -= self._take(choices[index], event)

    def _final_choice(self, c: _Choice, s: Settings, chat: bool) -> dict:
        text = c.text.ready(final=True)
        if chat:
            out = {"index": c.index, "message": {"role": "assistant", "content": text}}
            out["logprobs"] = None if s.logprobs is None else {"content": self._chat_logprobs(c, s)}
        else:
            prefix = self.tokenizer.decode(c.prompt) if s.echo else ""
            out = {"index": c.index, "text": prefix + text}
            out["logprobs"] = None if s.logprobs is None else self._completion_logprobs(c, s)
        out["finish_reason"] = c.reason
        return out

    def _kept(self, c: _Choice) -> list[Token]:
        """The generated tokens a client sees: up to (not with) the stop id."""
        return [t for t in c.tokens if t.id not in c.request.stop_ids]  # type: ignore[union-attr]

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _top(self, top: list[tuple[int, float]], n: int) -> dict:
        return {self._piece(i): lp for i, lp in top[:n]}

    def _completion_logprobs(self, c: _Choice, s: Settings) -> dict:
        n = s.logprobs or 0
        tokens, values, tops = [], [], []
        if s.echo:
            info = c.done.prompt_logprobs if c.done is not None else None
            for t, token_id in enumerate(c.prompt):
                tokens.append(self._piece(token_id))
                entry = info[t] if info else None
                values.append(None if entry is None else entry[0])
                tops.append(None if entry is None else self._top(entry[1], n))
        for token in self._kept(c):
            tokens.append(self._piece(token.id))
            values.append(token.logprob)
            tops.append(self._top(token.top, n))
        offsets, at = [], 0
        for piece in tokens:
            offsets.append(at)
            at += len(piece)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    def _chat_logprobs(self, c: _Choice, s: Settings, tokens: list[Token] | None = None) -> list[dict]:
        def entry(token_id: int, logprob: float) -> dict:
            piece = self._piece(token_id)
            return {"token": piece, "logprob": logprob, "bytes": list(piece.encode())}

        return [
            {**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top[: s.logprobs or 0]]}
            for t in (self._kept(c) if tokens is None else tokens)
        ]

    async def _stream(self, choices: list[_Choice], queue: asyncio.Queue, s: Settings, chat: bool, meta):
        kind = "chat.completion.chunk" if chat else "text_completion"
        sent_tokens = [0] * len(choices)

        def chunk(c: _Choice, piece: str, reason=None, logprobs=None) -> str:
            if chat:
                delta = {"content": piece} if piece or reason is None else {}
                body = {"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
            else:
                body = {"index": c.index, "text": piece, "logprobs": logprobs, "finish_reason": reason}
            return "data: " + json.dumps({**meta, "object": kind, "choices": [body]}) + "\n\n"

        def logprobs_of(c: _Choice):
            if s.logprobs is None:
                return None
            kept = self._kept(c)
            new, sent_tokens[c.index] = kept[sent_tokens[c.index] :], len(kept)
            if chat:
                return {"content": self._chat_logprobs(c, s, new)}
            tokens = [self._piece(t.id) for t in new]
            return {
                "tokens": tokens,
                "token_logprobs": [t.logprob for t in new],
                "top_logprobs": [self._top(t.top, s.logprobs) for t in new],
                "text_offset": [0] * len(tokens),
            }

        try:
            if chat:
                for c in choices:
                    head = {"index": c.index, "delta": {"role": "assistant", "content": ""}}
                    body = {**meta, "object": kind, "choices": [{**head, "finish_reason": None}]}
                    yield "data: " + json.dumps(body) + "\n\n"
            left = len(choices)
            while left:
                index, event = await queue.get()
                c = choices[index]
                if self._take(c, event):
                    left -= 1
                    yield chunk(c, c.text.ready(final=True), c.reason, logprobs_of(c))
                    continue
                piece = c.text.ready(final=False)
                if piece or (s.logprobs is not None and not c.text.stopped):
                    yield chunk(c, piece, logprobs=logprobs_of(c))
            if s.include_usage:
                usage = _usage([c.prompt for c in choices[:: s.n]], choices)
                yield "data: " + json.dumps({**meta, "object": kind, "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            _cancel(choices)


def _cancel(choices: list[_Choice]) -> None:
    for c in choices:
        if c.request is not None and c.done is None:
            c.request.cancel()


def _usage(prompts: list[list[int]], choices: list[_Choice]) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(c.tokens) for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _json(http: HttpRequest):
    raw = await http.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", None, "invalid_json") from None


class _ApiKey:
    """ASGI middleware: 401 without ``Authorization: Bearer KEY`` on every route but /health."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if self.key and scope["type"] == "http" and scope["path"] != "/health":
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.key}".encode()):
                error = ApiError(401, "a valid API key is required (Authorization: Bearer KEY)", None)
                await JSONResponse(error.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def make_app(server: Server):
    """The ASGI app of ``server``; its engine runs (started, then stopped with the app's lifespan)."""

    @asynccontextmanager
    async def lifespan(_app):
        server.engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(server.engine.stop)

    async def http_error(_request, exc: Exception):
        assert isinstance(exc, HTTPException)
        return error_response(ApiError(exc.status_code, str(exc.detail)))

    async def unexpected(_request, exc: Exception):
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

    app = Starlette(
        routes=[
            Route("/health", server.health, methods=["GET"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/v1/completions", server.completions, methods=["POST"]),
            Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: unexpected},
        lifespan=lifespan,
    )
    return _ApiKey(app, server.api_key)
