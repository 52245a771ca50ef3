"""Optimizers x schedules (issue 18): each equals a hand-written optax chain of the same definition step for
step and lowers the held-out loss of a tiny model; each resumes bit-exactly through the trainer's Orbax
checkpoints (jit over an FSDP mesh, and pmap), its optimizer state sharded by the FSDP rule."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_llama
from optax import contrib

from codex_jax.compute.loss import inputs_and_targets, mean_loss
from codex_jax.compute.optim import (
    OPTIMIZERS,
    SCHEDULES,
    OptimizerSpec,
    learning_rate_schedule,
    make_optimizer,
)
from codex_jax.compute.parallel import make_runner
from codex_jax.compute.state import create_train_state
from codex_jax.config import validation
from codex_jax.config.schema import default_config
from codex_jax.data.iterators import make_train_iterator
from codex_jax.evaluate import evaluate
from codex_jax.models.transformer import Transformer, init_params
from codex_jax.setup.checkpoints import open_checkpoints

MODEL = tiny_llama(num_layers=1)
STEPS, WARMUP, RATIO, FRACTION = 8, 2, 0.1, 0.25
LR = {"adamw": 1e-2, "adafactor": 1e-2, "lion": 2e-3, "muon": 1e-2}
MUON_LR, WD, B1, B2 = 0.03, 0.1, 0.9, 0.95


def _rows(n, seed):
    """``n`` rows of 17 tokens following ``t -> 5 t + 3 (mod 97)`` from random starts: learnable."""
    t = np.random.default_rng(seed).integers(0, MODEL.vocab_size, (n, 1))
    cols = [t]
    for _ in range(16):
        cols.append((cols[-1] * 5 + 3) % MODEL.vocab_size)
    return np.concatenate(cols, axis=1).astype(np.int32)


TRAIN = [_rows(8, seed) for seed in range(4)]
HELD_OUT = _rows(8, 99)


def _train_cfg(optimizer, schedule):
    c = default_config().train
    c.steps, c.warmup_steps, c.min_lr_ratio, c.wsd_decay_fraction = STEPS, WARMUP, RATIO, FRACTION
    c.optimizer, c.schedule, c.learning_rate, c.weight_decay = optimizer, schedule, LR[optimizer], WD
    c.beta1, c.beta2 = B1, B2
    c.adafactor.min_dim_size_to_factor, c.adafactor.momentum, c.adafactor.weight_decay_rate = 16, 0.9, 1e-3
    c.muon.learning_rate = MUON_LR
    return c


def _spec(optimizer, schedule):
    return OptimizerSpec.from_mapping(_train_cfg(optimizer, schedule))


# ------------------------------------------------------------------------------- the hand-written definitions


def _hand_schedule(peak, schedule):
    """The schedule written out: linear warmup from 0, then the named shape (ending at peak * RATIO)."""
    end = peak * RATIO

    def lr(count):
        count = jnp.asarray(count, jnp.float32)
        progress = jnp.clip((count - WARMUP) / (STEPS - WARMUP), 0.0, 1.0)
        if schedule == "cosine":
            after = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        elif schedule == "linear":
            after = peak + (end - peak) * progress
        elif schedule == "constant":
            after = jnp.full_like(count, peak)
        else:  # wsd: the last FRACTION of the steps decay linearly
            decay = round(FRACTION * STEPS)
            after = peak + (end - peak) * jnp.clip((count - (STEPS - decay)) / decay, 0.0, 1.0)
        return jnp.where(count < WARMUP, peak * count / WARMUP, after)

    return lr


def _names(path):
    return [str(getattr(p, "key", p)) for p in path]


def _decayed(params):  # matrices but embeddings
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim == 2 and not any("embed" in n for n in _names(path)), params
    )


def _muon_labels(params):  # hidden matrices: Muon; embeddings, head, norms: Adam
    def label(path, x):
        names = _names(path)
        return "muon" if x.ndim == 2 and not any("embed" in n or n == "lm_head" for n in names) else "adam"

    return jax.tree_util.tree_map_with_path(label, params)


def _muon_dims(params):  # the leaves partition hands Muon: each a matrix (input, output); others masked
    def dims(x):
        return x if isinstance(x, optax.MaskedNode) else contrib.MuonDimensionNumbers()

    return jax.tree.map(dims, params, is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def _hand_chain(optimizer, schedule):
    lr = _hand_schedule(LR[optimizer], schedule)
    clip = optax.clip_by_global_norm(1.0)
    if optimizer == "adamw":
        rule = [optax.scale_by_adam(B1, B2, eps=1e-8), optax.add_decayed_weights(WD, _decayed)]
        return optax.chain(clip, *rule, optax.scale_by_learning_rate(lr))
    if optimizer == "lion":
        rule = [optax.scale_by_lion(0.9, 0.99), optax.add_decayed_weights(WD, _decayed)]
        return optax.chain(clip, *rule, optax.scale_by_learning_rate(lr))
    if optimizer == "adafactor":
        return optax.chain(
            clip,
            optax.scale_by_factored_rms(True, 0.8, 0, 16, 1e-30),
            optax.clip_by_block_rms(1.0),
            optax.scale_by_learning_rate(lr, flip_sign=False),
            optax.ema(0.9, debias=False),
            optax.add_decayed_weights(1e-3, _decayed),
            optax.scale(-1),
        )
    muon = optax.chain(
        contrib.scale_by_muon(ns_steps=5, beta=0.95, nesterov=True, weight_dimension_numbers=_muon_dims),
        contrib._muon.scale_by_shape(weight_dimension_numbers=_muon_dims),
        optax.add_decayed_weights(WD),
        optax.scale_by_learning_rate(_hand_schedule(MUON_LR, schedule)),
    )
    adam = optax.chain(optax.scale_by_adam(B1, B2, eps=1e-8, nesterov=True), optax.scale_by_learning_rate(lr))
    return optax.chain(clip, optax.partition({"muon": muon, "adam": adam}, _muon_labels))


# ------------------------------------------------------------------------------------------------- tests


def _loss(params, rows):
    inputs, targets = inputs_and_targets(rows)
    return mean_loss(Transformer(MODEL), {"params": params}, inputs, targets)


@functools.cache
def _compiled():
    """The gradient and loss functions, compiled once for every case."""
    return jax.jit(jax.grad(_loss)), jax.jit(_loss)


def _apply(tx, params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _stepper(tx, optimizer):
    """``(params, opt_state, grads) -> (params, opt_state)``: eager (no compile), but jitted for Muon,
    whose Newton-Schulz loop (lax control flow) eager mode would compile again on every call."""
    step = functools.partial(_apply, tx)
    return jax.jit(step) if optimizer == "muon" else step


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_match_their_definition(schedule):
    spec = _spec("adamw", schedule)
    ours, hand = learning_rate_schedule(spec), _hand_schedule(spec.learning_rate, schedule)
    counts = np.arange(STEPS + 3)
    np.testing.assert_allclose([ours(c) for c in counts], [hand(c) for c in counts], rtol=1e-6, atol=1e-9)
    assert float(ours(0)) == 0.0 and float(ours(WARMUP)) == pytest.approx(spec.learning_rate)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_optimizer_matches_hand_written_chain(optimizer, schedule):
    """``make_optimizer`` of ``train.*`` == the optax chain written out, step for step (params within 1e-6
    after each of 4 steps: warmup, peak, decay), each trajectory with its own gradients."""
    grad, _ = _compiled()
    ours, hand = make_optimizer(_spec(optimizer, schedule)), _hand_chain(optimizer, schedule)
    start = init_params(MODEL, jax.random.key(0))
    p_ours, s_ours, p_hand, s_hand = start, ours.init(start), start, hand.init(start)
    step_ours, step_hand = _stepper(ours, optimizer), _stepper(hand, optimizer)
    for count in (0, 1, 2, 6):  # lr 0, warmup, peak, the decay (wsd: only there)
        batch = TRAIN[count % len(TRAIN)]
        if count == 6:  # jump the schedules' step counts forward (every count_* / mini_step leaf)
            s_ours, s_hand = (_at_count(s, 6) for s in (s_ours, s_hand))
        p_ours, s_ours = step_ours(p_ours, s_ours, grad(p_ours, batch))
        p_hand, s_hand = step_hand(p_hand, s_hand, grad(p_hand, batch))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), p_ours, p_hand)


def _at_count(opt_state, count):
    """``opt_state`` with its step counters set to ``count`` (scalar int32 leaves)."""
    return jax.tree.map(
        lambda x: jnp.full_like(x, count) if x.dtype == jnp.int32 and x.ndim == 0 else x, opt_state
    )


@pytest.mark.parametrize(
    "optimizer,schedule",
    [("adamw", "cosine"), ("adafactor", "linear"), ("lion", "constant"), ("muon", "wsd")],
)
def test_optimizer_and_schedule_lower_the_held_out_loss(optimizer, schedule):
    """Each optimizer, and each schedule, trains: 8 steps lower the held-out loss of the tiny model."""
    grad, loss = _compiled()
    tx = make_optimizer(_spec(optimizer, schedule))
    params = start = init_params(MODEL, jax.random.key(0))
    opt_state, step = tx.init(params), _stepper(tx, optimizer)
    for i in range(STEPS):
        params, opt_state = step(params, opt_state, grad(params, TRAIN[i % len(TRAIN)]))
    before, after = float(loss(start, HELD_OUT)), float(loss(params, HELD_OUT))
    assert after < before - 0.2, (before, after)


def test_choices_are_the_validated_ones():
    assert validation._CHOICES["train.optimizer"] == OPTIMIZERS
    assert validation._CHOICES["train.schedule"] == SCHEDULES


def _iterator():
    rows = np.concatenate(TRAIN)
    return make_train_iterator(rows, batch_size=8, seed=3)


def _steps(runner, state, it, n):
    losses = []
    for _ in range(n):
        state, metrics = runner.train_step(state, runner.put_batch(next(it)))
        losses.append(float(metrics["loss"]))
    return state, losses


def _checkpointed(tmp_path, state, it, step, abstract, fresh_it):
    """``state`` (and the iterator) saved at ``step`` by the trainer's Checkpointer and restored into
    ``abstract``'s shardings (``fresh_it`` set to the saved iterator state)."""
    checkpointer = open_checkpoints(tmp_path, read_only=False)
    try:
        checkpointer.save(step, state, it, {"test": True})
        checkpointer.wait()
        return checkpointer.restore(step, abstract, fresh_it)
    finally:
        checkpointer.close()


# Every optimizer under FSDP (where each one's state structure is sharded: the risk that differs between
# them); pmap (replicated state, the same path for every optimizer) once, with muon's partitioned state.
@pytest.mark.parametrize(
    "kind,optimizer,schedule",
    [
        ("fsdp", "adamw", "cosine"),
        ("fsdp", "adafactor", "constant"),
        ("fsdp", "lion", "linear"),
        ("fsdp", "muon", "wsd"),
        ("pmap", "muon", "constant"),
    ],
)
def test_resume_through_orbax_is_bit_exact(kind, optimizer, schedule, tmp_path):
    """2 steps, a save and restore through the trainer's Checkpointer (with the grain iterator), 2 more ==
    4 uninterrupted steps, bit for bit: losses, params, optimizer state (with the EMA) and PRNG key, with
    dropout and the z-loss on. Under FSDP every optimizer-state array as large as the sharding threshold
    (moments, the EMA) is sharded over 'fsdp'. With ``eval_ema`` the runner evaluates the EMA."""
    cfg = _train_cfg(optimizer, schedule)
    cfg.ema_decay = 0.9
    tx = make_optimizer(OptimizerSpec.from_mapping(cfg))
    model = Transformer(tiny_llama(num_layers=1, dropout=0.1))
    mode = "pmap" if kind == "pmap" else "jit"
    runner = make_runner(
        model, tx, mode=mode, mesh_shape=(2, 4), fsdp_min_size=256, z_loss=1e-3, eval_ema=True
    )
    make_state = lambda: create_train_state(init_params(model.cfg, jax.random.key(0)), tx, 0)  # noqa: E731

    it = _iterator()
    full, full_losses = _steps(runner, runner.init_state(make_state), it, 4)
    full = jax.device_get(runner.state_for_save(full))

    it = _iterator()
    part, part_losses = _steps(runner, runner.init_state(make_state), it, 2)
    if kind == "fsdp":
        big = [x for x in jax.tree.leaves(part.opt_state) if x.size >= 256]
        assert len(big) > len([x for x in jax.tree.leaves(part.params) if x.size >= 256])  # EMA + moments
        assert all("fsdp" in x.sharding.spec for x in big)
    abstract, fresh_it = runner.abstract_state(jax.eval_shape(make_state)), _iterator()
    restored = _checkpointed(tmp_path, runner.state_for_save(part), it, 2, abstract, fresh_it)
    resumed, more_losses = _steps(runner, runner.put_state(restored), fresh_it, 2)
    on_device, resumed = resumed, jax.device_get(runner.state_for_save(resumed))

    assert part_losses + more_losses == full_losses
    jax.tree.map(np.testing.assert_array_equal, resumed, full)
    # eval_ema: evaluation gets the EMA the optimizer state holds, not the raw parameters
    same = lambda a, ema: np.testing.assert_array_equal(a, np.broadcast_to(ema, a.shape))  # noqa: E731
    jax.tree.map(same, jax.device_get(runner.params(on_device)), resumed.opt_state.ema)  # pmap: stacked
    raw = evaluate(runner, on_device.params, [HELD_OUT])
    assert evaluate(runner, runner.params(on_device), [HELD_OUT])["loss"] != raw["loss"]
