"""The optimizer: warmup + cosine schedule, global-norm clipping, AdamW with a decay mask, accumulation."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` then cosine decay to ``learning_rate * min_lr_ratio``.

    Counts optimizer steps (not micro-steps): under ``optax.MultiSteps`` the inner optimizer only advances on
    real updates.
    """
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train_cfg.learning_rate,
        warmup_steps=train_cfg.warmup_steps,
        decay_steps=max(train_cfg.steps, train_cfg.warmup_steps + 1),
        end_value=train_cfg.learning_rate * train_cfg.min_lr_ratio,
    )


def decay_mask(params):
    """True for weight matrices that get weight decay: not norms, biases or embeddings."""

    def is_decayed(path, leaf) -> bool:
        names = [getattr(p, "key", str(p)) for p in path]
        return leaf.ndim >= 2 and not any("embed" in n for n in names)

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def uses_multisteps(train_cfg) -> bool:
    """Whether the optimizer is wrapped in optax.MultiSteps (its state then has MultiSteps' structure)."""
    return train_cfg["grad_accum_steps"] > 1 and train_cfg.get("accum_impl", "multisteps") == "multisteps"


def scan_steps(train_cfg) -> int:
    """Micro-batches each jitted train step takes: K under ``accum_impl='scan'``, else 1."""
    scan = train_cfg.get("accum_impl", "multisteps") == "scan"
    return train_cfg["grad_accum_steps"] if scan else 1


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with clipping and the schedule, wrapped in MultiSteps when accumulating gradients with
    ``train.accum_impl='multisteps'`` (under ``'scan'`` the train step itself averages the micro-batches)."""
    parts = []
    if train_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(train_cfg.grad_clip))
    parts.append(
        optax.adamw(
            learning_rate_schedule(train_cfg),
            b1=train_cfg.beta1,
            b2=train_cfg.beta2,
            weight_decay=train_cfg.weight_decay,
            mask=decay_mask,
        )
    )
    tx = optax.chain(*parts)
    if uses_multisteps(train_cfg):  # under accum_impl='scan' the train step itself accumulates
        tx = optax.MultiSteps(tx, every_k_schedule=train_cfg.grad_accum_steps).gradient_transformation()
    return tx
