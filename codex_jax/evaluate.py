"""Held-out evaluation: the metrics of ``eval.metrics`` over a fixed list of batches.

:func:`evaluate` is the trainer's fast path (loss, perplexity, token accuracy from the runner's
eval step). :func:`evaluate_metrics` computes any registered metric (metrics/registry.py): token
metrics accumulate in one jitted step per batch, sample metrics run on the host afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from codex_jax.compute.batch import is_masked, model_inputs
from codex_jax.compute.loss import chunked_token_stats, chunks_apply, cross_entropy, inputs_and_targets
from codex_jax.data.pipeline import eval_batches
from codex_jax.files import as_path, write_text_atomic
from codex_jax.generate import generate, left_pad
from codex_jax.metrics import registry
from codex_jax.metrics.base import json_number
from codex_jax.models.attention import softcap


def evaluate(runner, params, batches: list[np.ndarray]) -> dict[str, float]:
    """Token-weighted loss, perplexity and accuracy of ``params`` on ``batches`` (this process's
    rows); a mixture's batches (``batches.sources``: ``{name: (start, stop)}``) add ``NAME/loss``,
    ``NAME/perplexity`` and ``NAME/token_accuracy`` of each source's."""
    parts = getattr(batches, "sources", None) or {"": (0, len(batches))}
    per_source = {name: _eval_sums(runner, params, batches[a:b]) for name, (a, b) in parts.items()}
    metrics = _token_metrics(functools.reduce(_add_sums, per_source.values()))
    for name, sums in per_source.items() if len(per_source) > 1 else ():
        metrics.update({f"{name}/{k}": v for k, v in _token_metrics(sums).items()})
    return metrics


def _add_sums(a, b):
    """Two eval sums added, leaf by leaf."""
    return jax.tree.map(lambda x, y: x + y, a, b)


def _eval_sums(runner, params, batches: list[np.ndarray]):
    """The runner's eval sums (loss_sum, correct, tokens) over ``batches``, on the host."""
    totals = None
    for batch in batches:
        sums = runner.eval_step(params, runner.put_batch(batch))
        totals = sums if totals is None else _add_sums(totals, sums)
    return jax.device_get(totals)


def _token_metrics(totals) -> dict[str, float]:
    """Loss, perplexity and token accuracy from eval sums."""
    loss = float(totals["loss_sum"] / totals["tokens"])
    return {
        "loss": loss,
        "perplexity": float(math.exp(min(loss, 80.0))),
        "token_accuracy": float(totals["correct"] / totals["tokens"]),
    }


@dataclasses.dataclass
class EvalContext:
    """What metrics may use: the model and params, the tokenizer and the held-out windows."""

    model: Any
    params: Any
    tokenizer: Any
    eval_windows: np.ndarray  # every held-out window [M, seq_len + 1]
    batches: list[np.ndarray]  # this process's rows of the evaluated batches
    global_batch_size: int
    num_batches: int
    line_completion_samples: int = 32
    line_completion_max_tokens: int = 48
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    _bytes: int | None = None

    def target_bytes(self) -> int:
        """UTF-8 bytes of the text of every evaluated target token (all processes' rows)."""
        if self._bytes is None:
            rows = eval_batches(self.eval_windows, self.global_batch_size, self.num_batches)
            self._bytes = sum(len(self.tokenizer.decode(row[1:]).encode("utf-8")) for b in rows for row in b)
            self.details["eval_bytes"] = self._bytes
        return max(self._bytes, 1)

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations of token prompts (one batch, left-padded), cut at EOS."""
        tokens, lengths = left_pad(prompts)
        eos = self.tokenizer.eos_id if self.tokenizer.eos_id >= 0 else None
        out = np.asarray(
            generate(self.model, self.params, tokens, max_new_tokens, eos_id=eos, prompt_lengths=lengths)
        ).tolist()
        return [row[: row.index(eos)] if eos in row else row for row in out]


def line_tables(tokenizer, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per token id: does its text hold a newline (EOS counts), is it more than whitespace."""
    line_end, content = np.zeros(size, bool), np.zeros(size, bool)
    for i in range(min(size, tokenizer.vocab_size)):
        text = tokenizer.decode([i])
        line_end[i], content[i] = "\n" in text, bool(text.strip())
    if 0 <= tokenizer.eos_id < size:
        line_end[tokenizer.eos_id] = True
    return line_end, content


@functools.lru_cache(maxsize=32)
def _collection(metrics: tuple[tuple[str, type], ...]) -> type[clu_metrics.Collection]:
    return clu_metrics.Collection.create(**dict(metrics))


@functools.partial(jax.jit, static_argnames=("model", "collection"))
def _accumulate(model, collection, totals, params, batch_BxL, line_end_V, content_V):
    """``totals`` merged with one batch's metrics (all model outputs stay on device)."""
    if is_masked(batch_BxL):  # only the trained targets count; segments keep to themselves
        inputs_BxT, targets_BxT, weights_BxT, kw = model_inputs(batch_BxL)
        mask_BxT = weights_BxT > 0
    else:
        inputs_BxT, targets_BxT = inputs_and_targets(batch_BxL)
        mask_BxT, kw = jnp.ones(targets_BxT.shape, bool), {}
    variables = params if "params" in params else {"params": params}
    if chunks_apply(model.cfg.loss_chunk, targets_BxT.shape[1]):
        # Loss and accuracy chunk by chunk; the full logits only if a metric reads them (else XLA drops them).
        x_BxTxD, head_VxD = model.apply(variables, inputs_BxT, deterministic=True, hidden=True, **kw)
        loss_BxT, correct_BxT = chunked_token_stats(
            x_BxTxD, head_VxD, targets_BxT, model.cfg.loss_chunk, model.cfg.final_softcap
        )
        logits_BxTxV = softcap(
            jnp.einsum("btd,vd->btv", x_BxTxD, head_VxD, preferred_element_type=jnp.float32),
            model.cfg.final_softcap,
        )
    else:
        logits_BxTxV = model.apply(variables, inputs_BxT, deterministic=True, **kw).astype(jnp.float32)
        loss_BxT, correct_BxT = cross_entropy(logits_BxTxV, targets_BxT)
    outputs = {
        "loss": loss_BxT,
        "correct": correct_BxT.astype(jnp.float32),
        "mask": mask_BxT,
        "targets": targets_BxT,
        "line_end": line_end_V[targets_BxT],
        "content": content_V[targets_BxT],
        "logits": logits_BxTxV,
    }
    return totals.merge(collection.single_from_model_output(**outputs))


def evaluate_metrics(spec: str, ctx: EvalContext, put_batch=jnp.asarray) -> dict[str, float]:
    """The metrics named by ``spec`` (and loss, perplexity, token_accuracy) on ``ctx.batches``; a
    mixture's batches (``ctx.batches.sources``) add each source's ``NAME/loss``, ``NAME/perplexity`` and
    ``NAME/token_accuracy``.

    A sample metric that returns None (nothing to measure) is left out; ``ctx.details`` (e.g.
    ``line_completion_samples``, ``eval_bytes``) is added to the result.
    """
    metrics = registry.resolve(spec)
    token = {n: m for n, m in metrics.items() if isinstance(m, registry.TokenMetric)}
    fields = {n: f"m{i}" for i, n in enumerate(token)}  # names may not be identifiers
    collection = _collection(tuple((fields[n], m.metric) for n, m in token.items()))
    size = max(ctx.model.cfg.vocab_size, ctx.tokenizer.vocab_size)
    if any(m.needs_lines for m in token.values()):
        tables = line_tables(ctx.tokenizer, size)
    else:
        tables = (np.zeros(size, bool), np.zeros(size, bool))
    parts = getattr(ctx.batches, "sources", None) or {"": (0, len(ctx.batches))}  # a mixture's sources
    per_source = {}
    for source, (start, stop) in parts.items():
        totals = collection.empty()
        for batch in ctx.batches[start:stop]:
            totals = _accumulate(ctx.model, collection, totals, ctx.params, put_batch(batch), *tables)
        per_source[source] = totals
    totals = functools.reduce(lambda a, b: a.merge(b), per_source.values())
    computed = jax.device_get(totals.compute())
    by_source: dict[str, float] = {}
    for source, part in per_source.items() if len(per_source) > 1 else ():  # NAME/loss, ... per source
        values = jax.device_get(part.compute())
        for name in registry.ALWAYS:
            mean, finalize = float(values[fields[name]]), token[name].finalize
            by_source[f"{source}/{name}"] = finalize(mean, ctx) if finalize else mean
    results: dict[str, float] = {}
    for name, metric in metrics.items():
        value: float | None
        if isinstance(metric, registry.TokenMetric):
            value = float(computed[fields[name]])
            value = metric.finalize(value, ctx) if metric.finalize else value
        else:
            value = metric.fn(ctx)
        if value is not None:
            results[name] = float(value)
    return {**results, **by_source, **ctx.details}


def evaluate_checkpoint(cfg, workdir: Path, model, params, step: int, data, put_batch, batches):
    """``{'step', metric...}`` of ``cfg.eval.metrics``, also written to ``workdir/eval_<step>.json``
    (by process 0)."""
    ctx = EvalContext(
        model,
        params,
        data.tokenizer,
        data.eval_windows,
        batches,
        global_batch_size=cfg.data.batch_size,
        num_batches=cfg.eval.num_batches,
        line_completion_samples=cfg.eval.line_completion_samples,
        line_completion_max_tokens=cfg.eval.line_completion_max_tokens,
    )
    result = {"step": step, **evaluate_metrics(cfg.eval.metrics, ctx, put_batch)}
    if jax.process_index() == 0:
        record = {k: json_number(v) for k, v in result.items()}
        write_text_atomic(
            as_path(workdir) / f"eval_{step}.json", json.dumps(record, indent=2, allow_nan=False) + "\n"
        )
    return result
