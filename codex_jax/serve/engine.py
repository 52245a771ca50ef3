"""Continuous batching: a fixed number of sequence slots over one KV cache, stepped by one thread.

Each slot holds one sequence whose cache column equals its token position (no padding), so the decode
step runs the model per slot (``jax.vmap`` over slots, each a batch of one with its own scalar
``cache_index``); causal attention in cache columns hides whatever a slot's earlier occupant left
beyond the current column. A new request joins at a step boundary: its prompt, right-padded to a
length bucket, is prefilled into a fresh cache that is copied into its slot; a finished or cancelled
request frees its slot before the next step. The compiled shapes are fixed by the slot count, the
context length and the buckets, so after :meth:`Engine.warm_up` nothing compiles again
(:attr:`Engine.compiles` counts traces).

Tokens go out through each request's ``emit`` callback (called on the engine thread): no HTTP here.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from codex_jax.errors import UserError
from codex_jax.generate import sample_rows
from codex_jax.models.transformer import init_cache

TOP_LOGPROBS = 5  # alternatives returned per position (OpenAI's most for completions)


class QueueFull(Exception):
    """More requests wait than the engine's ``max_queue``."""


@dataclasses.dataclass
class Token:
    """One generated token: its id, log-probability and the top alternatives ``[(id, logprob)]``."""

    id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclasses.dataclass
class Done:
    """The end of a request: ``'stop'`` (a stop id), ``'length'`` (max_tokens or the context's end),
    ``'cancelled'``; with the prompt's logprobs (``[None, ...]`` per prompt token) when asked."""

    reason: str
    prompt_logprobs: list | None = None


@dataclasses.dataclass(eq=False)
class Request:
    """A prompt (token ids) and its sampling settings; ``emit`` receives each :class:`Token`, then one
    :class:`Done`."""

    prompt: list[int]
    max_tokens: int
    emit: Callable[[Token | Done], None]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: frozenset[int] = frozenset()
    prompt_logprobs: bool = False
    cancelled: bool = False
    generated: int = 0
    prompt_info: list | None = None  # the prompt's logprobs, once prefilled (when asked)

    def cancel(self) -> None:
        """Frees the request's slot at the next step boundary (no more tokens are emitted)."""
        self.cancelled = True


def buckets(context: int, smallest: int = 16) -> list[int]:
    """Prefill lengths: powers of two from ``smallest`` below ``context``, then ``context``."""
    out, size = [], smallest
    while size < context:
        out.append(size)
        size *= 2
    return [*out, context]


class Engine:
    """``slots`` sequences of up to ``context`` tokens over one KV cache; :meth:`submit` queues a
    :class:`Request` (at most ``max_queue`` waiting), :meth:`start` runs the stepping thread."""

    def __init__(self, model, params, *, slots: int = 8, context: int | None = None, max_queue: int = 64):
        self.model = model
        self.variables = params if "params" in params else {"params": params}
        self.slots = int(slots)
        self.context = int(context or model.cfg.max_seq_len)
        if self.slots < 1 or self.context < 2:
            raise UserError(f"serve needs --slots >= 1 and a context >= 2, got {slots}, {self.context}")
        self.max_queue = int(max_queue)
        self.buckets = buckets(self.context)
        self.compiles = 0  # traces of the step functions (each one a compile)
        self.compiles_at_warm_up: int | None = None
        self.steps = 0
        self.finished: collections.Counter[str] = collections.Counter()  # requests ended, by reason
        self._cache = init_cache(model.cfg, self.slots, self.context)
        self._active: list[Request | None] = [None] * self.slots
        self._tokens_N = np.zeros(self.slots, np.int32)  # the token each slot feeds next
        self._columns_N = np.zeros(self.slots, np.int32)  # the cache column it goes to
        self._temperature_N = np.zeros(self.slots, np.float32)
        self._top_k_N = np.zeros(self.slots, np.int32)
        self._top_p_N = np.ones(self.slots, np.float32)
        self._keys_N = np.zeros((self.slots, 2), np.uint32)
        self._queue: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._prefill = jax.jit(self._prefill_fn, donate_argnums=(1,))
        self._decode = jax.jit(self._decode_fn, donate_argnums=(1,))

    # ------------------------------------------------------------------ the public side (any thread)

    def submit(self, request: Request) -> None:
        """Queues ``request``; QueueFull when ``max_queue`` already wait, ValueError when its prompt is
        empty or longer than the context."""
        if not request.prompt:
            raise ValueError("the prompt is empty")
        if len(request.prompt) > self.context:
            raise ValueError(
                f"the prompt has {len(request.prompt)} tokens, more than the model's context of "
                f"{self.context} tokens"
            )
        with self._wake:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are already waiting")
            self._queue.append(request)
            self._wake.notify()

    def withdraw(self, requests: list[Request]) -> None:
        """Cancels ``requests`` and takes those still waiting out of the queue now, so that a request refused
        as a whole (QueueFull after some of its choices were queued) frees its places at once."""
        with self._wake:
            for request in requests:
                request.cancel()
            withdrawn = {id(r) for r in requests}
            self._queue = collections.deque(r for r in self._queue if id(r) not in withdrawn)

    def stats(self) -> dict:
        """Slots in use, requests waiting, steps run and compiles (in all, and since warm-up)."""
        after = None if self.compiles_at_warm_up is None else self.compiles - self.compiles_at_warm_up
        return {
            "slots": self.slots,
            "active": sum(r is not None for r in self._active),
            "queued": len(self._queue),
            "steps": self.steps,
            "finished": dict(self.finished),
            "context": self.context,
            "compiles": self.compiles,
            "compiles_after_warm_up": after,
        }

    def warm_up(self) -> None:
        """Compiles the decode step and every prefill bucket (before :meth:`start`)."""
        for size in self.buckets:
            self._run_prefill(0, [0] * size, Request([0], 0, lambda _: None))
        self._run_decode()
        self.compiles_at_warm_up = self.compiles

    def start(self) -> None:
        """Starts the stepping thread."""
        self._thread = threading.Thread(target=self._loop, name="codex-jax-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finishes the requests in flight and queued, then stops the thread; refuses new ones."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    # ------------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not any(self._active) and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self._queue and not any(self._active):
                    return
            try:
                self._release_cancelled()
                self._admit()
                if any(self._active):
                    self._run_decode()
            except Exception as e:  # noqa: BLE001 - a failed step ends its requests, not the server
                print(f"serve: a step failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                for slot, request in enumerate(self._active):
                    if request is not None:
                        self._finish(slot, "error")

    def _release_cancelled(self) -> None:
        for slot, request in enumerate(self._active):
            if request is not None and request.cancelled:
                self._finish(slot, "cancelled")

    def _admit(self) -> None:
        while None in self._active:
            with self._wake:
                if not self._queue:
                    return
                request = self._queue.popleft()
            if request.cancelled:
                self.finished["cancelled"] += 1
                request.emit(Done("cancelled"))
                continue
            slot = self._active.index(None)
            self._active[slot] = request
            self._run_prefill(slot, request.prompt, request)

    def _finish(self, slot: int, reason: str, prompt_logprobs=None) -> None:
        request = self._active[slot]
        self._active[slot] = None
        self._temperature_N[slot] = 0.0  # an idle slot decodes greedily (its output is dropped)
        if request is not None:
            self.finished[reason] += 1
            request.emit(Done(reason, prompt_logprobs))

    def _run_prefill(self, slot: int, prompt: list[int], request: Request) -> None:
        size = next(b for b in self.buckets if b >= len(prompt))
        tokens_P = np.zeros(size, np.int32)
        tokens_P[: len(prompt)] = prompt
        key = np.asarray(jax.random.key_data(jax.random.key(request.seed)), np.uint32)
        self._cache, out = self._prefill(
            self.variables,
            self._cache,
            np.int32(slot),
            tokens_P,
            np.int32(len(prompt)),
            np.float32(request.temperature),
            np.int32(request.top_k),
            np.float32(request.top_p),
            key,
        )
        if self._active[slot] is not request:  # warm-up
            return
        token, logprob, top_ids, top_logprobs, prompt_logprobs_P, prompt_top_ids, prompt_top_lp = (
            jax.device_get(out)
        )
        prompt_info = None
        if request.prompt_logprobs:
            prompt_info = [None] + [
                (
                    float(prompt_logprobs_P[t - 1]),
                    list(zip(prompt_top_ids[t - 1].tolist(), prompt_top_lp[t - 1].tolist(), strict=True)),
                )
                for t in range(1, len(prompt))
            ]
        if request.max_tokens <= 0:
            self._finish(slot, "length", prompt_info)
            return
        self._tokens_N[slot] = token
        self._columns_N[slot] = len(prompt)
        self._temperature_N[slot] = request.temperature
        self._top_k_N[slot] = request.top_k
        self._top_p_N[slot] = request.top_p
        self._keys_N[slot] = key
        request.prompt_info = prompt_info
        self._deliver(slot, int(token), float(logprob), top_ids, top_logprobs)

    def _run_decode(self) -> None:
        counts_N = np.array([0 if r is None else r.generated for r in self._active], np.int32)
        self._cache, out = self._decode(
            self.variables,
            self._cache,
            self._tokens_N,
            np.minimum(self._columns_N, self.context - 1),
            self._temperature_N,
            self._top_k_N,
            self._top_p_N,
            self._keys_N,
            counts_N,
        )
        self.steps += 1
        tokens_N, logprobs_N, top_ids_NxK, top_logprobs_NxK = jax.device_get(out)
        for slot, request in enumerate(self._active):
            if request is None:
                continue
            if request.cancelled:
                self._finish(slot, "cancelled")
                continue
            self._tokens_N[slot] = tokens_N[slot]
            self._columns_N[slot] += 1
            self._deliver(
                slot, int(tokens_N[slot]), float(logprobs_N[slot]), top_ids_NxK[slot], top_logprobs_NxK[slot]
            )

    def _deliver(self, slot: int, token: int, logprob: float, top_ids, top_logprobs) -> None:
        request = self._active[slot]
        assert request is not None
        request.generated += 1
        top = list(zip(np.asarray(top_ids).tolist(), np.asarray(top_logprobs).tolist(), strict=True))
        request.emit(Token(token, logprob, top))
        if token in request.stop_ids:
            self._finish(slot, "stop", request.prompt_info)
        elif request.generated >= request.max_tokens or self._columns_N[slot] >= self.context:
            self._finish(slot, "length", request.prompt_info)  # the token would have no cache column to go to

    # ------------------------------------------------------------------ the compiled steps

    def _prefill_fn(self, variables, cache, slot, tokens_P, length, temperature, top_k, top_p, key):
        self.compiles += 1
        model = self.model
        (P,) = tokens_P.shape
        fresh = init_cache(model.cfg, 1, P)
        logits_1xPxV, fresh = model.apply(
            variables,
            tokens_P[None],
            positions_BxT=jnp.arange(P, dtype=jnp.int32)[None],
            kv_cache=fresh,
            cache_index=0,
        )
        cache = jax.tree.map(
            lambda big, new: jax.lax.dynamic_update_slice(big, new.astype(big.dtype), (slot, 0, 0, 0)),
            cache,
            fresh,
        )
        logits_PxV = logits_1xPxV[0]
        last_1xV = jax.lax.dynamic_slice_in_dim(logits_PxV, length - 1, 1, axis=0)
        token = sample_rows(
            last_1xV,
            jax.random.wrap_key_data(key)[None],
            temperature[None],
            top_k[None],
            top_p[None],
        )[0]
        logp_PxV = jax.nn.log_softmax(logits_PxV.astype(jnp.float32), axis=-1)
        top_lp_PxK, top_ids_PxK = jax.lax.top_k(logp_PxV, TOP_LOGPROBS)
        next_P = jnp.roll(tokens_P, -1)  # the token each position predicts (the last one is junk)
        prompt_lp_P = jnp.take_along_axis(logp_PxV, next_P[:, None], axis=-1)[:, 0]
        last_lp_V = jax.lax.dynamic_index_in_dim(logp_PxV, length - 1, keepdims=False)
        last_top_lp_K = jax.lax.dynamic_index_in_dim(top_lp_PxK, length - 1, keepdims=False)
        last_top_ids_K = jax.lax.dynamic_index_in_dim(top_ids_PxK, length - 1, keepdims=False)
        out = (token, last_lp_V[token], last_top_ids_K, last_top_lp_K, prompt_lp_P, top_ids_PxK, top_lp_PxK)
        return cache, out

    def _decode_fn(
        self, variables, cache, tokens_N, columns_N, temperature_N, top_k_N, top_p_N, keys_N, counts_N
    ):
        self.compiles += 1
        model = self.model

        def one(slot_cache, token, column):
            logits_1x1xV, slot_cache = model.apply(
                variables,
                token[None, None],
                positions_BxT=column[None, None],
                kv_cache=jax.tree.map(lambda x: x[None], slot_cache),
                cache_index=column,
            )
            return logits_1x1xV[0, 0], jax.tree.map(lambda x: x[0], slot_cache)

        logits_NxV, cache = jax.vmap(one)(cache, tokens_N, columns_N)
        step_keys_N = jax.vmap(jax.random.fold_in)(jax.random.wrap_key_data(keys_N), counts_N)
        next_N = sample_rows(logits_NxV, step_keys_N, temperature_N, top_k_N, top_p_N)
        logp_NxV = jax.nn.log_softmax(logits_NxV.astype(jnp.float32), axis=-1)
        top_lp_NxK, top_ids_NxK = jax.lax.top_k(logp_NxV, TOP_LOGPROBS)
        chosen_N = jnp.take_along_axis(logp_NxV, next_N[:, None], axis=-1)[:, 0]
        return cache, (next_N, chosen_N, top_ids_NxK, top_lp_NxK)
