"""SFT train steps (issue 14): token-weighted accumulation (MultiSteps == scan == one big batch) and bit-exact
resume with segments and masks on jit and pmap runners."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from conftest import tiny_llama

from codex_jax.compute.batch import stack
from codex_jax.compute.optim import OptimizerSpec, make_optimizer
from codex_jax.compute.parallel import JitRunner, PmapRunner, make_mesh
from codex_jax.compute.state import create_train_state
from codex_jax.config.schema import default_config
from codex_jax.data.iterators import make_train_iterator
from codex_jax.data.packing import START, TRAINED, pack_examples
from codex_jax.models.transformer import Transformer, init_params

MODEL = tiny_llama(dropout=0.1)
NO_DROPOUT = tiny_llama()


def _rows(seed=0):
    """Segment-packed rows of 17 tokens from 120 random examples of 2..12 tokens, half of each trained."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 13, 120)
    tokens = rng.integers(3, MODEL.vocab_size, lengths.sum()).astype(np.uint16)
    flags = np.zeros(lengths.sum(), np.uint8)
    starts = np.cumsum([0, *lengths[:-1]])
    flags[starts] = START
    for s, n in zip(starts, lengths, strict=True):
        flags[s + n // 2 : s + n] |= TRAINED
    rows, _ = pack_examples(tokens, flags, 17, "segments")
    return rows


ROWS = _rows()


def _spec(accum, impl="multisteps"):
    c = default_config().train
    c.steps, c.warmup_steps, c.learning_rate = 10, 2, 1e-2
    return dataclasses.replace(OptimizerSpec.from_mapping(c), grad_accum_steps=accum, accum_impl=impl)


def _runner(kind, accum, impl, model=MODEL):
    """(runner, its initial state on the host, optimizer spec)."""
    spec = _spec(accum, impl)
    tx = make_optimizer(spec)
    if kind == "pmap":
        runner = PmapRunner(Transformer(model), tx, 8, scan_steps=spec.scan_steps)
    else:
        mesh = make_mesh(num_devices=8 if kind == "jit8" else 1)
        runner = JitRunner(Transformer(model), tx, mesh, scan_steps=spec.scan_steps)
    state = runner.init_state(lambda: create_train_state(init_params(model, jax.random.key(0)), tx, 0))
    return runner, jax.device_get(runner.state_for_save(state)), spec


def _train(runner, batch, accum, steps, resume=None):
    """(losses, host state, iterator state) after ``steps`` optimizer steps (from ``resume``'s state)."""
    runner, initial, spec = runner
    it = make_train_iterator(ROWS, batch_size=batch, seed=3, accum_steps=accum)
    state = runner.put_state(initial if resume is None else resume[0])
    if resume is not None:
        it.set_state(resume[1])
    losses = []
    for _ in range(steps):
        for _ in range(accum // spec.scan_steps):
            local = [next(it) for _ in range(spec.scan_steps)]
            batch_in = runner.put_batch(local[0] if spec.scan_steps == 1 else stack(local))
            state, m = runner.train_step(state, batch_in)
            losses += np.atleast_1d(jax.device_get(m["loss"])).tolist()
    return losses, jax.device_get(runner.state_for_save(state)), it.get_state()


def test_accumulation_weighs_tokens_over_the_whole_step():
    """K=4 micro-batches (MultiSteps or scan) == one batch of all their rows: the gradient is the mean over
    every trained target of the optimizer step, however the targets fall into micro-batches."""
    _, big, _ = _train(_runner("jit1", 1, "multisteps", NO_DROPOUT), 32, 1, 1)
    for impl in ("multisteps", "scan"):
        _, acc, _ = _train(_runner("jit1", 4, impl, NO_DROPOUT), 8, 4, 1)
        assert int(acc.step) == int(big.step) == 1
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), acc.params, big.params
        )


@pytest.mark.parametrize("kind,impl", [("jit8", "multisteps"), ("pmap", "scan")])
def test_resume_with_segments_and_masks_is_bit_exact(kind, impl):
    """A fresh iterator at the saved state and the state through the host continue bit for bit."""
    runner = _runner(kind, 4, impl)
    full_losses, full, _ = _train(runner, 8, 4, 3)
    part_losses, part, it_state = _train(runner, 8, 4, 1)
    more_losses, resumed, _ = _train(runner, 8, 4, 2, resume=(part, it_state))
    assert part_losses + more_losses == full_losses
    jax.tree.map(np.testing.assert_array_equal, resumed, full)
