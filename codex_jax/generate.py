"""KV-cache sampling: a jitted prefill, then a jitted ``lax.while_loop`` of one-token decode steps.

Ragged prompts use LEFT padding: row ``b`` holds its ``prompt_lengths[b]`` tokens in the last
columns of ``prompts_BxT`` (Hugging Face's ``padding_side='left'``). Then every row's next token is
written to the same cache column, the last prompt column always holds a real token, and only the
positions (``column - padding``) and a key mask (hiding the padding) differ per row. Right-padded
prompts are accepted with ``padding='right'`` and moved to the left first; :func:`left_pad` builds a
batch from token lists.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from codex_jax.errors import UserError
from codex_jax.models.transformer import init_cache
from codex_jax.safety import filter_output
from codex_jax.tokenizers.chat import chat_prompt, end_of_turn_ids


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Next-token choice: greedy when ``temperature == 0``, else temperature/top-k/top-p draws."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def __call__(self, logits_BxV, rng):
        if self.greedy:
            return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
        B = logits_BxV.shape[0]
        filtered_BxV = filter_logits(
            logits_BxV,
            jnp.full((B,), self.temperature, jnp.float32),
            jnp.full((B,), self.top_k, jnp.int32),
            jnp.full((B,), self.top_p, jnp.float32),
        )
        return jax.random.categorical(rng, filtered_BxV, axis=-1).astype(jnp.int32)


def filter_logits(logits_BxV, temperature_B, top_k_B, top_p_B):
    """Float32 logits divided by each row's temperature (> 0), then -inf outside its top-k (``0``: all)
    and outside its top-p nucleus (``1.0``: all; the top token is always kept)."""
    V = logits_BxV.shape[-1]
    logits_BxV = logits_BxV.astype(jnp.float32) / temperature_B[:, None]
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    k_B = jnp.where((top_k_B > 0) & (top_k_B < V), top_k_B, V)
    kth_Bx1 = jnp.take_along_axis(sorted_BxV, k_B[:, None] - 1, axis=-1)
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    sorted_BxV = jnp.where(sorted_BxV < kth_Bx1, -jnp.inf, sorted_BxV)  # the sorted top-k rows
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept_B = jnp.sum(mass_before_BxV < top_p_B[:, None], axis=-1)  # >= 1: the top token is always kept
    threshold_Bx1 = jnp.take_along_axis(sorted_BxV, kept_B[:, None] - 1, axis=-1)
    nucleus_BxV = (logits_BxV >= threshold_Bx1) | (top_p_B[:, None] >= 1.0)
    return jnp.where(nucleus_BxV, logits_BxV, -jnp.inf)


def sample_rows(logits_BxV, keys_B, temperature_B, top_k_B, top_p_B):
    """One token per row with the row's own settings and key (``temperature_B <= 0``: greedy), as
    :class:`Sampler` draws them; for batches whose rows are different requests (``codex-jax serve``)."""
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)

    def draw(_):
        safe_B = jnp.where(temperature_B > 0, temperature_B, 1.0)
        filtered_BxV = filter_logits(logits_BxV, safe_B, top_k_B, top_p_B)
        drawn_B = jax.vmap(lambda key, row_V: jax.random.categorical(key, row_V))(keys_B, filtered_BxV)
        return jnp.where(temperature_B > 0, drawn_B.astype(jnp.int32), greedy_B)

    return jax.lax.cond(jnp.any(temperature_B > 0), draw, lambda _: greedy_B, None)


def left_pad(prompts: list[list[int]], pad_id: int = 0, width: int = 0):
    """``(prompts_BxT, prompt_lengths_B)`` int32 numpy arrays, rows left-padded with ``pad_id`` to the longest
    prompt, or to ``width`` columns when that is more (a fixed width compiles once)."""
    T = max(width, *(len(p) for p in prompts))
    tokens = np.full((len(prompts), T), pad_id, np.int32)
    for row, p in enumerate(prompts):
        tokens[row, T - len(p) :] = p
    return tokens, np.array([len(p) for p in prompts], np.int32)


def _right_to_left(prompts_BxT, lengths_B):
    T = prompts_BxT.shape[1]
    source_BxT = (jnp.arange(T)[None, :] - (T - lengths_B)[:, None]) % T
    return jnp.take_along_axis(prompts_BxT, source_BxT, axis=1)


def _split(sampler: Sampler, rng):
    return (rng, rng) if sampler.greedy else tuple(jax.random.split(rng))


@functools.partial(jax.jit, static_argnames=("model", "sampler", "max_new_tokens", "eos_id"))
def _generate(model, sampler, max_new_tokens, eos_id, variables, prompts_BxT, lengths_B, rng):
    B, T = prompts_BxT.shape
    S = T + max_new_tokens - 1  # the last new token is never fed back
    pad_id = 0 if eos_id is None else eos_id
    padding_B = T - lengths_B
    col_S = jnp.arange(S, dtype=jnp.int32)
    valid_BxS = col_S[None, :] >= padding_B[:, None]
    # Padding queries see only themselves (their outputs are never used; this keeps softmax finite).
    diagonal_TxS = col_S[None, :] == jnp.arange(T, dtype=jnp.int32)[:, None]
    prefill_mask_BxTxS = valid_BxS[:, None, :] | diagonal_TxS[None]
    positions_BxT = jnp.maximum(jnp.arange(T, dtype=jnp.int32)[None, :] - padding_B[:, None], 0)

    cache = init_cache(model.cfg, B, S)
    logits_BxTxV, cache = model.apply(
        variables,
        prompts_BxT,
        positions_BxT=positions_BxT,
        kv_cache=cache,
        cache_index=0,
        mask_BxTxS=prefill_mask_BxTxS,
    )
    rng, step_rng = _split(sampler, rng)
    token_B = sampler(logits_BxTxV[:, -1], step_rng)
    out_BxN = jnp.full((B, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token_B)
    done_B = jnp.zeros((B,), bool) if eos_id is None else token_B == eos_id

    def cond(state):
        i, _, _, _, done_B, _ = state
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def body(state):
        i, token_B, cache, out_BxN, done_B, rng = state
        logits_Bx1xV, cache = model.apply(
            variables,
            token_B[:, None],
            positions_BxT=(lengths_B + i - 1)[:, None],
            kv_cache=cache,
            cache_index=T + i - 1,
            mask_BxTxS=valid_BxS[:, None, :],
        )
        rng, step_rng = _split(sampler, rng)
        token_B = jnp.where(done_B, pad_id, sampler(logits_Bx1xV[:, 0], step_rng))
        out_BxN = jax.lax.dynamic_update_slice_in_dim(out_BxN, token_B[:, None], i, axis=1)
        if eos_id is not None:
            done_B = done_B | (token_B == eos_id)
        return i + 1, token_B, cache, out_BxN, done_B, rng

    state = (jnp.int32(1), token_B, cache, out_BxN, done_B, rng)
    return jax.lax.while_loop(cond, body, state)[3]


def generate(
    model,
    params,
    prompts_BxT,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    rng=None,
    prompt_lengths=None,
    padding: str = "left",
):
    """New tokens ``[B, max_new_tokens]``; after ``eos_id`` a row holds ``eos_id``, else 0 when set.

    ``prompts_BxT`` are left-padded when ``prompt_lengths`` (valid tokens per row) is given; pass
    ``padding='right'`` for right-padded rows. ``params`` is the ``'params'`` tree, or a full
    variables dict (e.g. ``{'params': p, 'lora': l}``). Compiles once per (shapes, settings).
    """
    prompts_BxT = jnp.asarray(prompts_BxT, jnp.int32)
    B, T = prompts_BxT.shape
    if max_new_tokens < 1 or T < 1:
        raise UserError(
            f"generate needs a non-empty prompt and max_new_tokens >= 1, got {T}, {max_new_tokens}"
        )
    if model.cfg.positions == "learned" and T + max_new_tokens - 1 > model.cfg.max_seq_len:
        raise UserError(
            f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceed the model's max_seq_len "
            f"{model.cfg.max_seq_len}"
        )
    if padding not in ("left", "right"):
        raise UserError(f"generate padding={padding!r}: expected 'left' or 'right'")
    lengths_B = (
        jnp.full((B,), T, jnp.int32) if prompt_lengths is None else jnp.asarray(prompt_lengths, jnp.int32)
    )
    if padding == "right":
        prompts_BxT = _right_to_left(prompts_BxT, lengths_B)
    variables = params if "params" in params else {"params": params}
    rng = jax.random.key(0) if rng is None else rng
    sampler = Sampler(float(temperature), int(top_k), float(top_p))
    eos_id = None if eos_id is None or eos_id < 0 else int(eos_id)
    return _generate(model, sampler, int(max_new_tokens), eos_id, variables, prompts_BxT, lengths_B, rng)


def complete(
    model, params, tokenizer, prompt: str, max_new_tokens: int, chat_template=None, **sampling
) -> str:
    """The text after ``prompt`` (up to the tokenizer's EOS). ``sampling``: see :func:`generate`.

    With a ``chat_template`` (text; '' for the tokenizer's own or the built-in one) the prompt is one user
    turn followed by the assistant's generation prompt, and the answer ends at an end-of-turn token.
    """
    ids = list(
        tokenizer.encode(prompt) if chat_template is None else chat_prompt(tokenizer, prompt, chat_template)
    )
    if not ids:
        bos = getattr(tokenizer, "bos_id", None)
        if bos is None or bos < 0:
            raise UserError("complete: the prompt encodes to no tokens and the tokenizer has no bos_id")
        ids = [bos]
    if model.cfg.positions == "learned":
        ids = ids[-max(1, model.cfg.max_seq_len - max_new_tokens + 1) :]  # keep the end of a long prompt
    eos_id = getattr(tokenizer, "eos_id", None)
    sampling.setdefault("eos_id", eos_id)
    new = np.asarray(generate(model, params, [ids], max_new_tokens, **sampling))[0].tolist()
    stops = [sampling["eos_id"]] if chat_template is None else end_of_turn_ids(tokenizer)
    ends = [new.index(i) for i in stops if i is not None and i in new]
    return tokenizer.decode(new[: min(ends)] if ends else new)


def sample(
    model,
    params,
    tokenizer,
    prompt: str,
    settings: ml_collections.ConfigDict,
    max_new_tokens: int | None = None,
    chat_template: str = "",
) -> str:
    """``prompt`` and its completion as the ``generate`` config section ``settings`` says: drawn with
    ``temperature`` and ``top_k``/``top_p`` from ``jax.random.key(seed)`` (the same seed, settings and
    params give the same text; ``temperature=0``: greedy), ``max_new_tokens`` unless given, and
    ``safety_policy``, which redacts or withholds secrets in the completion. Under ``settings.chat``
    the prompt is a user turn of ``chat_template`` ('': the tokenizer's own, or the built-in one) and
    the answer follows a newline."""
    completion = complete(
        model,
        params,
        tokenizer,
        prompt,
        settings.max_new_tokens if max_new_tokens is None else max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        rng=jax.random.key(settings.seed),
        chat_template=chat_template if settings.chat else None,
    )
    return prompt + ("\n" if settings.chat else "") + filter_output(completion, settings.safety_policy)
