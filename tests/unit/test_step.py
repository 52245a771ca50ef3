"""The pure train step under jit (1 and 8 devices) and pmap, and gradient accumulation equivalence."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from conftest import tiny_llama

from codex_jax.compute.optim import OptimizerSpec, make_optimizer
from codex_jax.compute.parallel import JitRunner, PmapRunner, make_mesh
from codex_jax.compute.state import create_train_state
from codex_jax.config.schema import default_config
from codex_jax.models.transformer import Transformer, init_params

MODEL = tiny_llama()


def _train_cfg(accum=1):
    c = default_config().train
    c.steps, c.warmup_steps, c.learning_rate, c.grad_accum_steps = 10, 2, 1e-2, accum
    return OptimizerSpec.from_mapping(c)


def _batches(n, batch, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, MODEL.vocab_size, (batch, 17), dtype=np.int32) for _ in range(n)]


def _run(runner, tx, batches):
    model = Transformer(MODEL)
    state = runner.init_state(lambda: create_train_state(init_params(model.cfg, jax.random.key(0)), tx, 0))
    losses = []
    for b in batches:
        state, m = runner.train_step(state, runner.put_batch(b))
        losses.append(float(m["loss"]))
    return losses, jax.device_get(runner.state_for_save(state))


@functools.cache
def _reference(repeats):
    """Losses and final state of the 1-device jit run on ``_batches(2, 8) * repeats`` (computed once)."""
    model, tx = Transformer(MODEL), make_optimizer(_train_cfg())
    return _run(JitRunner(model, tx, make_mesh(num_devices=1)), tx, _batches(2, 8) * repeats)


@pytest.mark.parametrize("kind", ["jit8", "pmap4", "pmap8"])
def test_modes_match_single_device(kind):
    model, tx = Transformer(MODEL), make_optimizer(_train_cfg())
    batches = _batches(2, 8) * 3  # repeated data, so the loss must fall
    ref_losses, ref_state = _reference(3)
    runner = {
        "jit8": lambda: JitRunner(model, tx, make_mesh()),
        "pmap4": lambda: PmapRunner(model, tx, 4),
        "pmap8": lambda: PmapRunner(model, tx, 8),
    }[kind]()
    losses, state = _run(runner, tx, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert ref_losses[-1] < ref_losses[0]
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        state.params,
        ref_state.params,
    )


def test_accumulation_matches_big_batch():
    model = Transformer(MODEL)
    big = _batches(4, 8)
    micro = [b[i : i + 2] for b in big for i in range(0, 8, 2)]
    tx1, tx4 = make_optimizer(_train_cfg(1)), make_optimizer(_train_cfg(4))
    _, s1 = _run(JitRunner(model, tx1, make_mesh(num_devices=1)), tx1, big)
    _, s4 = _run(JitRunner(model, tx4, make_mesh(num_devices=1)), tx4, micro)
    assert int(s1.step) == int(s4.step) == 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s1.params, s4.params)


@pytest.mark.parametrize("kind", ["jit1", "fsdp2x4", "pmap8"])
def test_scan_accumulation_matches_multisteps(kind):
    """train.accum_impl='scan' (one call per optimizer step) == optax.MultiSteps (one call per
    micro-batch): same micro-batches, dropout keys, losses and params, on each kind of runner."""
    model = Transformer(tiny_llama(dropout=0.1))
    micro = _batches(12, 8)  # 3 optimizer steps of 4 micro-batches
    runners = {
        "jit1": lambda tx, k: JitRunner(model, tx, make_mesh(num_devices=1), scan_steps=k),
        "fsdp2x4": lambda tx, k: JitRunner(model, tx, make_mesh(2, 4), fsdp_min_size=256, scan_steps=k),
        "pmap8": lambda tx, k: PmapRunner(model, tx, 8, scan_steps=k),
    }
    results = {}
    for impl, feed in (("multisteps", micro), ("scan", [np.stack(micro[i : i + 4]) for i in (0, 4, 8)])):
        tx = make_optimizer(dataclasses.replace(_train_cfg(4), accum_impl=impl))
        runner = runners[kind](tx, 4 if impl == "scan" else 1)
        state = runner.init_state(
            lambda tx=tx: create_train_state(init_params(model.cfg, jax.random.key(0)), tx, 0)
        )
        losses = []
        for batch in feed:
            state, m = runner.train_step(state, runner.put_batch(batch))
            losses += np.atleast_1d(jax.device_get(m["loss"])).tolist()
        results[impl] = losses, jax.device_get(runner.state_for_save(state))
    (ms_losses, ms_state), (scan_losses, scan_state) = results["multisteps"], results["scan"]
    assert len(scan_losses) == 12 and int(ms_state.step) == int(scan_state.step) == 3
    np.testing.assert_allclose(scan_losses, ms_losses, rtol=1e-5)
    np.testing.assert_array_equal(ms_state.rng, scan_state.rng)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        scan_state.params,
        ms_state.params,
    )


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2), (1, 8)])
def test_fsdp_meshes_match_single_device(data, fsdp):
    model, tx = Transformer(MODEL), make_optimizer(_train_cfg())
    batches = _batches(2, 8) * 5
    ref_losses, _ = _reference(5)  # the 1x1 mesh
    runner = JitRunner(model, tx, make_mesh(data, fsdp), fsdp_min_size=256)
    losses, _ = _run(runner, tx, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


def test_fsdp_shrinks_per_device_parameter_bytes():
    model, tx = Transformer(MODEL), make_optimizer(_train_cfg())

    def bytes_on_device0(runner):
        state = runner.init_state(
            lambda tx=tx: create_train_state(init_params(model.cfg, jax.random.key(0)), tx, 0)
        )
        leaves = jax.tree.leaves((state.params, state.opt_state))
        return sum(
            s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == jax.devices()[0]
        )

    full = bytes_on_device0(JitRunner(model, tx, make_mesh(8, 1), fsdp_min_size=256))
    sharded = bytes_on_device0(JitRunner(model, tx, make_mesh(1, 8), fsdp_min_size=256))
    assert sharded < full / 4, (sharded, full)
