"""Evaluation metrics by name (``eval.metrics``): built-ins and ``codex_jax.metrics`` plugins.

Two kinds of metric:

- :class:`TokenMetric`: a CLU metric class (``clu.metrics.Metric``) built from every held-out
  batch with ``from_model_output(**outputs)`` and merged across batches inside one jitted step;
  ``finalize(value, context)`` turns its computed value into the reported float on the host.
  ``outputs`` (all ``[B, T]``, one entry per target token): ``loss`` (float32 nats), ``correct``
  (float32 1/0: argmax hit), ``mask`` (bool), ``targets`` (int32), ``line_end`` (bool: the target
  token holds a newline or is EOS), ``content`` (bool: its text is not just whitespace) and
  ``logits`` (``[B, T, V]``). ``line_end``/``content`` are filled only for metrics that set
  ``needs_lines``.
- :class:`SampleMetric`: ``fn(context) -> float | None`` on the host, e.g. by generating text
  with the restored model (generated code is never executed).

A plugin package declares ``[project.entry-points."codex_jax.metrics"] my_metric =
"pkg.mod:METRIC"`` where ``METRIC`` is one of these (or a zero-argument callable returning one).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from codex_jax import plugins
from codex_jax.errors import UserError
from codex_jax.metrics.line_completion import line_completion

ALWAYS = ("loss", "perplexity", "token_accuracy")


@dataclasses.dataclass(frozen=True)
class TokenMetric:
    """A metric of next-token predictions, accumulated in jit by a CLU metric class."""

    metric: type
    finalize: Callable[[float, Any], float] | None = None
    description: str = ""
    needs_lines: bool = False


@dataclasses.dataclass(frozen=True)
class SampleMetric:
    """A metric computed on the host from the evaluation context (e.g. by generating text)."""

    fn: Callable[[Any], float | None]
    description: str = ""


@flax.struct.dataclass
class Sum(clu_metrics.Metric):
    """The masked sum of one output (``Sum.from_output('loss')``)."""

    total: jnp.ndarray

    @classmethod
    def empty(cls) -> Sum:
        return cls(total=jnp.array(0, jnp.float32))

    @classmethod
    def from_model_output(cls, values, mask=None, **_) -> Sum:
        values = jnp.asarray(values, jnp.float32)
        mask = jnp.ones_like(values, bool) if mask is None else mask
        return cls(total=jnp.where(mask, values, 0.0).sum())

    def merge(self, other: Sum) -> Sum:
        return type(self)(total=self.total + other.total)

    def compute(self):
        return self.total


@flax.struct.dataclass
class LineExactMatch(clu_metrics.Metric):
    """Teacher-forced line exact match: of the complete lines inside the windows that hold code
    (not just whitespace), the fraction whose every token the model's argmax predicts."""

    correct_lines: jnp.ndarray
    lines: jnp.ndarray

    @classmethod
    def empty(cls) -> LineExactMatch:
        return cls(correct_lines=jnp.array(0, jnp.int32), lines=jnp.array(0, jnp.int32))

    @classmethod
    def from_model_output(cls, correct, line_end, content, mask=None, **_) -> LineExactMatch:
        B, T = correct.shape
        line_end = line_end.astype(jnp.int32)
        # Segment k of a row: the tokens after its k-th line end, up to and including the next.
        # Segment 0 starts mid-line and the one after the last line end is cut off: neither counts.
        segment_BxT = jnp.cumsum(line_end, axis=1) - line_end
        ids = (jnp.arange(B)[:, None] * (T + 1) + segment_BxT).ravel()
        ok = correct.astype(bool) if mask is None else correct.astype(bool) | ~mask
        wrong = jax.ops.segment_sum((~ok).astype(jnp.int32).ravel(), ids, num_segments=B * (T + 1))
        code = jax.ops.segment_sum(content.astype(jnp.int32).ravel(), ids, num_segments=B * (T + 1))
        k = jnp.arange(T + 1)[None, :]
        complete = (k >= 1) & (k < line_end.sum(axis=1)[:, None]) & (code.reshape(B, T + 1) > 0)
        return cls(
            correct_lines=(complete & (wrong.reshape(B, T + 1) == 0)).sum(dtype=jnp.int32),
            lines=complete.sum(dtype=jnp.int32),
        )

    def merge(self, other: LineExactMatch) -> LineExactMatch:
        return type(self)(self.correct_lines + other.correct_lines, self.lines + other.lines)

    def compute(self):
        return self.correct_lines / jnp.maximum(self.lines, 1)


def _perplexity(loss: float, _ctx) -> float:
    return math.exp(min(loss, 80.0))


def _bits_per_byte(loss_sum: float, ctx) -> float:
    return loss_sum / (ctx.target_bytes() * math.log(2))


BUILTIN: dict[str, TokenMetric | SampleMetric] = {
    "loss": TokenMetric(
        clu_metrics.Average.from_output("loss"), description="mean cross entropy (nats/token)"
    ),
    "perplexity": TokenMetric(clu_metrics.Average.from_output("loss"), _perplexity, "exp(loss)"),
    "token_accuracy": TokenMetric(
        clu_metrics.Average.from_output("correct"), description="argmax == next token"
    ),
    "bits_per_byte": TokenMetric(
        Sum.from_output("loss"),
        _bits_per_byte,
        "summed loss in bits over the UTF-8 bytes of the target tokens' text",
    ),
    "exact_match": TokenMetric(
        LineExactMatch,
        description="teacher-forced: complete lines whose every token is the argmax",
        needs_lines=True,
    ),
    "line_completion": SampleMetric(
        line_completion,
        "greedy generation reproduces the next line of a held-out function",
    ),
}


def _check_plugin(name: str, obj: Any) -> TokenMetric | SampleMetric:
    if not isinstance(obj, TokenMetric | SampleMetric) and callable(obj):
        obj = obj()
    if not isinstance(obj, TokenMetric | SampleMetric):
        raise TypeError(f"expected a TokenMetric or SampleMetric, got {type(obj).__name__}")
    return obj


def plugins_group() -> plugins.Group:
    """The loaded ``codex_jax.metrics`` plugins and the failures."""
    return plugins.load(plugins.METRICS, _check_plugin, reserved=BUILTIN)


def names() -> list[str]:
    """Every metric name: built-ins, then plugins."""
    return [*BUILTIN, *sorted(plugins_group().loaded)]


def resolve(spec: str | Sequence[str]) -> dict[str, TokenMetric | SampleMetric]:
    """The metrics named in ``spec`` (``'loss,bits_per_byte'``), after the ones always reported."""
    wanted = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    found = {**plugins_group().loaded, **BUILTIN}
    out = {}
    for name in [*ALWAYS, *wanted]:
        if not name or name in out:
            continue
        if name not in found:
            failed = plugins_group().failed.get(name)
            hint = f" (its plugin failed to load: {failed})" if failed else ""
            raise UserError(
                f"config key 'eval.metrics': unknown metric {name!r}{hint}; known: {', '.join(names())}"
            )
        out[name] = found[name]
    return out
