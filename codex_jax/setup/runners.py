"""The compute objects a run config asks for: its optimizer, its train and eval runners, and its fresh
train state. The one place that reads ``train.*`` / ``parallel.*`` for compute/, which never sees a config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import ml_collections
import optax

from codex_jax.compute.grpo import GRPO
from codex_jax.compute.optim import OptimizerSpec, make_optimizer
from codex_jax.compute.parallel import JitRunner, make_mesh, make_runner
from codex_jax.compute.preference import DPO
from codex_jax.compute.state import TrainState, create_train_state
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import init_params
from codex_jax.setup import adapters


def optimizer_spec(cfg: ml_collections.ConfigDict) -> OptimizerSpec:
    """The optimizer that ``train.*`` describes (GRPO: its schedule counts each of a step's
    ``train.grpo.iterations`` updates)."""
    spec = OptimizerSpec.from_mapping(cfg.train)
    iterations = cfg.train.grpo.iterations if cfg.train.get("objective") == "grpo" else 1
    if iterations > 1:
        spec = dataclasses.replace(
            spec, steps=spec.steps * iterations, warmup_steps=spec.warmup_steps * iterations
        )
    return spec


def train_runner(cfg: ml_collections.ConfigDict, model) -> tuple[object, optax.GradientTransformation]:
    """``(runner, tx)``: the optimizer and the jit (mesh) or pmap runner of ``parallel.*`` that trains it
    (with ``train.z_loss``; its evaluation uses the parameters' EMA under ``eval.use_ema``)."""
    spec = optimizer_spec(cfg)
    tx = make_optimizer(spec)
    runner = make_runner(
        model,
        tx,
        mode=cfg.parallel.mode,
        mesh_shape=(cfg.parallel.mesh.data, cfg.parallel.mesh.fsdp, cfg.parallel.mesh.get("expert", 1)),
        fsdp_min_size=cfg.parallel.fsdp_min_size,
        skip_nonfinite=cfg.train.on_nan == "skip",
        scan_steps=spec.scan_steps,
        z_loss=cfg.train.z_loss,
        eval_ema=cfg.eval.use_ema,
        objective=objective_settings(cfg),
    )
    return runner, tx


def objective_settings(cfg: ml_collections.ConfigDict) -> DPO | GRPO | None:
    """The settings of ``train.objective``: None for 'lm', else :class:`DPO` / :class:`GRPO`."""
    if cfg.train.objective == "dpo":
        d = cfg.train.dpo
        return DPO(loss=d.loss, beta=d.beta, label_smoothing=d.label_smoothing)
    if cfg.train.objective == "grpo":
        g = cfg.train.grpo
        return GRPO(
            epsilon=g.epsilon,
            epsilon_high=g.epsilon_high,
            beta=g.beta,
            aggregation=g.aggregation,
            scale_rewards=g.scale_rewards,
            max_completion_tokens=g.max_new_tokens,
            iterations=g.iterations,
        )
    return None


def eval_runner(cfg: ml_collections.ConfigDict, model) -> JitRunner:
    """A jit runner over this machine's devices (whatever device count saved the checkpoint)."""
    mesh = cfg.parallel.mesh
    data, fsdp, expert = (
        (-1, 1, 1) if cfg.parallel.mode == "pmap" else (mesh.data, mesh.fsdp, mesh.get("expert", 1))
    )
    return JitRunner(
        model, tx=None, mesh=make_mesh(data, fsdp, expert=expert), fsdp_min_size=cfg.parallel.fsdp_min_size
    )


def fresh_state_fn(
    cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, tx: optax.GradientTransformation
) -> Callable[[], TrainState]:
    """The function that builds step 0's train state: over the params (init of ``seed``), or in a LoRA run
    over the adapter tree only. Runners call it under their shardings; ``jax.eval_shape`` gives its shapes."""
    if adapters.enabled(cfg):
        return lambda: create_train_state(adapters.init_adapters(cfg, model_cfg), tx, cfg.seed)
    return lambda: create_train_state(init_params(model_cfg, jax.random.key(cfg.seed)), tx, cfg.seed)
