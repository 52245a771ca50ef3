"""The stabilisers of issue 18: the z-loss (chunked == unchunked, values and gradients; the train step reports
cross entropy and the z term apart) and the parameters' EMA kept in the optimizer state."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_llama

from codex_jax import api
from codex_jax.compute import step as step_lib
from codex_jax.compute.loss import inputs_and_targets, log_partition, z_objective_sums
from codex_jax.compute.optim import OptimizerSpec, ema_params, make_optimizer, with_params_ema
from codex_jax.compute.state import create_train_state
from codex_jax.config.schema import default_config
from codex_jax.errors import UserError
from codex_jax.models.transformer import Transformer, init_params

MODEL = tiny_llama(num_layers=1)
ROWS = np.random.default_rng(0).integers(0, MODEL.vocab_size, (4, 17), dtype=np.int32)
Z = 1e-2


def _sums(model_cfg, params, weights):
    inputs, targets = inputs_and_targets(ROWS)
    return z_objective_sums(Transformer(model_cfg), {"params": params}, inputs, targets, weights, Z)


def test_chunked_z_objective_matches_the_full_logits():
    """``model.loss_chunk=4`` (its own VJP) == the full logits (autodiff): the three sums and the gradient
    of the objective, with a weight mask."""
    params = init_params(MODEL, jax.random.key(1))
    weights = jnp.asarray(np.random.default_rng(1).integers(0, 2, (4, 16)), jnp.float32)
    full = dataclasses.replace(MODEL, loss_chunk=0)
    chunked = dataclasses.replace(MODEL, loss_chunk=4)

    @jax.jit
    def both(params):  # one compile: sums and gradient of each path
        def objective(cfg):
            return lambda p: _sums(cfg, p, weights)[0]

        return [(_sums(cfg, params, weights), jax.grad(objective(cfg))(params)) for cfg in (chunked, full)]

    (sums_chunked, grad_chunked), (sums_full, grad_full) = both(params)
    for a, b in zip(sums_chunked, sums_full, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad_chunked, grad_full)
    total, ce, z = sums_full
    assert float(total) == pytest.approx(float(ce + Z * z), rel=1e-6)


def test_train_step_reports_cross_entropy_and_the_z_term():
    """With ``z_loss`` the step's ``loss`` is still the cross entropy (== a z-loss-free step's), its
    ``z_loss`` is ``z * mean(logsumexp(logits)^2)``, and the gradient differs."""
    c = default_config().train
    tx = make_optimizer(OptimizerSpec.from_mapping(c))
    model = Transformer(MODEL)
    state = create_train_state(init_params(MODEL, jax.random.key(0)), tx, 0)
    _, plain = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx))(state, ROWS)
    _, with_z = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx, z_loss=Z))(state, ROWS)
    np.testing.assert_allclose(with_z["loss"], plain["loss"], rtol=1e-6)
    inputs, _ = inputs_and_targets(ROWS)
    lse = log_partition(model.apply({"params": state.params}, inputs))
    np.testing.assert_allclose(with_z["z_loss"], Z * jnp.mean(lse**2), rtol=1e-5)
    assert "z_loss" not in plain
    assert float(with_z["grad_norm"]) != float(plain["grad_norm"])  # the z term has a gradient


def test_ema_follows_the_parameters_once_per_optimizer_step():
    """``ema = d * ema + (1 - d) * params`` after each update, from the initial params; under MultiSteps
    (K=2) only the second micro-step of each optimizer step moves it."""
    params = {"w": jnp.arange(4.0)}
    tx = with_params_ema(optax.sgd(0.5), 0.9)
    state, expected = tx.init(params), params["w"]
    for g in (1.0, -2.0, 3.0):
        updates, state = tx.update({"w": jnp.full(4, g)}, state, params)
        params = optax.apply_updates(params, updates)
        expected = 0.9 * expected + 0.1 * params["w"]
        np.testing.assert_allclose(ema_params(state, params)["w"], expected, rtol=1e-6)

    c = default_config().train
    c.grad_accum_steps, c.ema_decay, c.warmup_steps, c.weight_decay = 2, 0.5, 0, 0.0
    tx = make_optimizer(OptimizerSpec.from_mapping(c))
    params = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    seen = []
    for _ in range(4):
        updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
        params = optax.apply_updates(params, updates)
        seen.append(float(ema_params(state, params)["w"][0, 0]))
    assert seen[0] == 1.0 and seen[1] < 1.0 and seen[2] == seen[1] and seen[3] < seen[2]


def test_no_ema_is_an_error_when_asked_for():
    tx = make_optimizer(OptimizerSpec.from_mapping(default_config().train))
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="train.ema_decay"):
        ema_params(tx.init(params), params)


def test_eval_mode_restores_the_ema_and_resume_keeps_the_optimizer(tmp_path):
    """``eval.use_ema``: --mode=eval evaluates the EMA the checkpoint's optimizer state holds (the same
    loss as training's last evaluation of it), not the saved params. Resuming the run with another
    optimizer, or without the EMA, is refused before anything is written."""
    overrides = {
        "train.steps": 2,
        "train.warmup_steps": 0,
        "train.ema_decay": 0.5,
        "train.z_loss": 1e-4,
        "train.log_every": 1,
        "eval.use_ema": True,
        "eval.num_batches": 1,
        "data.seq_len": 32,
        "generate.max_new_tokens": 0,
        "logging.writers": "ndjson",
    }
    run = tmp_path / "run"
    final = api.train(api.load_config("tiny", overrides), run)
    logged = [json.loads(line) for line in (run / "metrics.ndjson").read_text().splitlines()]
    z_terms = [r["z_loss"] for r in logged if r.get("split") == "train" and "loss" in r]
    assert len(z_terms) == 2 and all(0 < z < 1 for z in z_terms)  # train.z_loss's term is logged
    with_ema = api.evaluate(api.workdir_config(run), run)
    raw = api.evaluate(api.workdir_config(run, {"eval.use_ema": False}), run)
    assert with_ema["loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert raw["loss"] != pytest.approx(with_ema["loss"], rel=1e-3)
    for change, key in (
        ({"train.optimizer": "lion"}, "train.optimizer"),
        ({"train.ema_decay": 0.0}, "train.ema_decay"),
    ):
        more = api.workdir_config(run, {"train.steps": 3, "eval.use_ema": False, **change})
        with pytest.raises(UserError, match=f"optimizer state was saved with {key}"):
            api.train(more, run)
