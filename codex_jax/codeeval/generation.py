"""Completions of problem prompts: prompts bucketed by length, batched KV-cache generation
(:func:`codex_jax.generate.generate`), cut at EOS and at the first stop sequence."""

from __future__ import annotations

import dataclasses
import itertools
import sys

import jax
import numpy as np
import tqdm

from codex_jax.codeeval import chat
from codex_jax.codeeval.problems import Problem
from codex_jax.codeeval.settings import Settings
from codex_jax.generate import generate


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A problem and the token ids of its prompt the model sees (``dropped``: ids cut from its start)."""

    problem: Problem
    ids: list[int]
    dropped: int = 0


def encode_prompts(
    problems: list[Problem],
    tokenizer,
    context: int,
    max_new_tokens: int,
    truncate: bool = False,
    encode=None,
) -> tuple[list[Prompt], list[str]]:
    """The prompts that fit ``len(ids) + max_new_tokens - 1 <= context`` (the model's positions): with
    ``truncate`` a longer one keeps its last ids that fit (the program still runs the whole prompt), else
    it is skipped; ``'task_id: why'`` for each problem skipped. ``encode(problem) -> ids`` (default: the
    prompt's text)."""
    prompts, skipped = [], []
    room = context - max_new_tokens + 1
    for problem in problems:
        ids = list(tokenizer.encode(problem.prompt) if encode is None else encode(problem))
        if not ids:
            skipped.append(f"{problem.task_id}: the prompt encodes to no tokens")
        elif len(ids) > room and (not truncate or room < 1):
            skipped.append(
                f"{problem.task_id}: prompt of {len(ids)} tokens + codeeval.max_new_tokens={max_new_tokens} "
                f"exceed the model's context of {context}"
            )
        elif len(ids) > room:
            prompts.append(Prompt(problem, ids[len(ids) - room :], len(ids) - room))
        else:
            prompts.append(Prompt(problem, ids))
    return prompts, skipped


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to (not including) the first occurrence of any stop sequence."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def bucket_batches(
    lengths: list[int], batch_size: int, bucket: int, limit: int
) -> list[tuple[int, list[int]]]:
    """``(padded length, row indices)`` batches: rows grouped by length rounded up to ``bucket``
    (at most ``limit``), shortest first, at most ``batch_size`` rows each."""

    def padded(row: int) -> int:
        return min(-(-lengths[row] // bucket) * bucket, limit)

    order = sorted(range(len(lengths)), key=lambda row: (padded(row), row))
    batches = []
    for length, group in itertools.groupby(order, key=padded):
        rows = list(group)
        batches += [(length, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    return batches


def _completion(tokenizer, prompt_ids: list[int], new_ids: list[int], eos_id, stop) -> str:
    if eos_id is not None and eos_id in new_ids:
        new_ids = new_ids[: new_ids.index(eos_id)]
    prompt_text = tokenizer.decode(prompt_ids)
    full = tokenizer.decode(prompt_ids + new_ids)  # decoding in context keeps a leading space
    text = full[len(prompt_text) :] if full.startswith(prompt_text) else tokenizer.decode(new_ids)
    return truncate_at_stop(text, stop)


def generate_texts(
    model,
    params,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    *,
    stop: tuple[str, ...] = (),
    batch_size: int = 8,
    bucket: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> list[str]:
    """The completion of each prompt (each fits: ``len + max_new_tokens - 1 <= max_seq_len``): rows
    bucketed by length, ``batch_size`` at a time (a last partial batch is padded: one compilation per
    bucket), cut at EOS and at the first of ``stop``."""
    lengths = [len(ids) for ids in prompt_ids]
    limit = model.cfg.max_seq_len - max_new_tokens + 1
    eos_id = tokenizer.eos_id if tokenizer.eos_id is not None and tokenizer.eos_id >= 0 else None
    texts: list[str] = [""] * len(prompt_ids)
    bar = tqdm.tqdm(total=len(texts), desc="generate", unit="sample", disable=not progress, file=sys.stderr)
    for number, (T, batch) in enumerate(bucket_batches(lengths, batch_size, bucket, limit)):
        padded = batch + [batch[-1]] * (batch_size - len(batch))
        tokens_BxT = np.zeros((len(padded), T), np.int32)
        for i, row in enumerate(padded):
            tokens_BxT[i, T - lengths[row] :] = prompt_ids[row]
        new_BxN = generate(
            model,
            params,
            tokens_BxT,
            max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos_id=eos_id,
            rng=jax.random.fold_in(jax.random.key(seed), number),
            prompt_lengths=np.array([lengths[row] for row in padded], np.int32),
        )
        new_BxN = np.asarray(new_BxN)
        for i, row in enumerate(batch):
            texts[row] = _completion(tokenizer, prompt_ids[row], new_BxN[i].tolist(), eos_id, stop)
        bar.update(len(batch))
    bar.close()
    return texts


def complete_all(
    model, params, tokenizer, prompts: list[Prompt], settings: Settings, seed: int, progress=True
) -> list[list[str]]:
    """``settings.num_samples`` completions of each prompt (greedy: one, repeated), in order; chat prompts'
    answers (``settings.prompt_format='chat'``, not cut at ``codeeval.stop``) made completions of the
    problem's prompt (:mod:`codex_jax.codeeval.chat`)."""
    copies = 1 if settings.greedy else settings.num_samples
    chat_format = settings.prompt_format == "chat"
    texts = generate_texts(
        model,
        params,
        tokenizer,
        [p.ids for p in prompts for _ in range(copies)],
        settings.max_new_tokens,
        stop=() if chat_format else settings.stop,
        batch_size=settings.batch_size,
        bucket=settings.bucket,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=seed,
        progress=progress,
    )
    if chat_format:
        texts = [chat.completion_of(prompts[i // copies].problem, t) for i, t in enumerate(texts)]
    per_prompt = [texts[r * copies : (r + 1) * copies] for r in range(len(prompts))]
    return [c * settings.num_samples if settings.greedy else c for c in per_prompt]
