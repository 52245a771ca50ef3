"""The optimizer: warmup + cosine schedule, global-norm clipping, AdamW with a decay mask, accumulation.

It is built from an :class:`OptimizerSpec` (plain values, never the run's ConfigDict); the run level makes
one from ``train.*`` with :meth:`OptimizerSpec.from_mapping`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import optax


def accumulates_with_multisteps(grad_accum_steps: int, accum_impl: str = "multisteps") -> bool:
    """Whether the optimizer is wrapped in optax.MultiSteps (its state then has MultiSteps' structure)."""
    return grad_accum_steps > 1 and accum_impl == "multisteps"


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What the optimizer is made of: the ``train.*`` values it reads, and nothing else."""

    learning_rate: float
    warmup_steps: int
    steps: int
    min_lr_ratio: float
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    grad_accum_steps: int = 1
    accum_impl: str = "multisteps"

    @classmethod
    def from_mapping(cls, train: Mapping[str, Any]) -> OptimizerSpec:
        """The spec of a ``train`` section (a ConfigDict or a saved config's dict)."""
        return cls(**{f.name: train[f.name] for f in dataclasses.fields(cls) if f.name in train})

    @property
    def uses_multisteps(self) -> bool:
        """True when micro-steps accumulate inside optax.MultiSteps (one jitted call per micro-batch)."""
        return accumulates_with_multisteps(self.grad_accum_steps, self.accum_impl)

    @property
    def scan_steps(self) -> int:
        """Micro-batches each jitted train step takes: K under ``accum_impl='scan'``, else 1."""
        return self.grad_accum_steps if self.accum_impl == "scan" else 1


def learning_rate_schedule(spec: OptimizerSpec) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` then cosine decay to ``learning_rate * min_lr_ratio``.

    Counts optimizer steps (not micro-steps): under ``optax.MultiSteps`` the inner optimizer only advances on
    real updates.
    """
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=spec.learning_rate,
        warmup_steps=spec.warmup_steps,
        decay_steps=max(spec.steps, spec.warmup_steps + 1),
        end_value=spec.learning_rate * spec.min_lr_ratio,
    )


def decay_mask(params):
    """True for weight matrices that get weight decay: not norms, biases or embeddings."""

    def is_decayed(path, leaf) -> bool:
        names = [getattr(p, "key", str(p)) for p in path]
        return leaf.ndim >= 2 and not any("embed" in n for n in names)

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
    """AdamW with clipping and the schedule, wrapped in MultiSteps when accumulating gradients with
    ``accum_impl='multisteps'`` (under ``'scan'`` the train step itself averages the micro-batches)."""
    parts = []
    if spec.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(spec.grad_clip))
    parts.append(
        optax.adamw(
            learning_rate_schedule(spec),
            b1=spec.beta1,
            b2=spec.beta2,
            weight_decay=spec.weight_decay,
            mask=decay_mask,
        )
    )
    tx = optax.chain(*parts)
    if spec.uses_multisteps:
        tx = optax.MultiSteps(tx, every_k_schedule=spec.grad_accum_steps).gradient_transformation()
    return tx
