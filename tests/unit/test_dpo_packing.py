"""train.dpo.packing: pairs packed several to a row (each side its own segment) give the same DPO losses,
metrics and gradients as one row per side, for a full fine-tune (cached reference) and a LoRA run (its
base as the reference), in fewer rows; the packed iterator resumes bit-exactly; bad combinations fail."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codex_jax.compute.objectives import is_pairs, pair_eval_sums
from codex_jax.compute.preference import DPO, dpo_objective, reference_logps
from codex_jax.config.schema import default_config
from codex_jax.config.validation import validate
from codex_jax.data.pair_packing import pack_pairs, packed_shape
from codex_jax.data.preference import PairBatches
from codex_jax.errors import UserError
from codex_jax.models import lora
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params

VOCAB, L, N, B = 61, 24, 10, 4  # rows of L + 1 tokens; N pairs; micro-batches of B pairs


@pytest.fixture(scope="module")
def model_and_params():
    cfg = ModelConfig(
        num_layers=2, d_model=32, d_ff=64, num_heads=4, num_kv_heads=2, vocab_size=VOCAB, max_seq_len=32,
    )  # fmt: skip
    return Transformer(cfg), init_params(cfg, jax.random.key(0))


def _arrays(seed=0):
    """N pairs: a shared prompt of 2-5 tokens, completions of 1-7 tokens, right-padded with 0."""
    rng = np.random.default_rng(seed)
    arrays = {}
    prompts = [rng.integers(3, VOCAB, rng.integers(2, 6)) for _ in range(N)]
    for side in ("chosen", "rejected"):
        tokens = np.zeros((N, L + 1), np.int32)
        weights = np.zeros((N, L), np.float32)
        for i, prompt in enumerate(prompts):
            ids = np.concatenate([prompt, rng.integers(3, VOCAB, rng.integers(1, 8))])
            tokens[i, : len(ids)] = ids
            weights[i, len(prompt) - 1 : len(ids) - 1] = 1.0
        arrays[side], arrays[f"{side}_weights"] = tokens, weights
    arrays["ref_chosen"] = rng.normal(-30.0, 3.0, N).astype(np.float32)
    arrays["ref_rejected"] = rng.normal(-30.0, 3.0, N).astype(np.float32)
    return arrays


def _both(arrays):
    """The first micro-batch of the pairs, unpacked and packed (the same pairs)."""
    plain = next(PairBatches(arrays, B, seed=3))
    packed = next(PairBatches(arrays, B, seed=3, packing=True))
    return jax.tree.map(jnp.asarray, plain), jax.tree.map(jnp.asarray, packed)


def _close(a, b, what):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5, err_msg=what)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_packed_losses_metrics_and_gradients_equal_unpacked(model_and_params, loss):
    model, params = model_and_params
    plain, packed = _both(_arrays())
    assert packed["tokens"].shape[0] < 2 * B  # unpacked: B chosen rows + B rejected rows
    assert is_pairs(packed) and packed["chosen_at"].shape == (B,)
    dpo = DPO(loss, 0.1)

    def objective(p, batch):
        return dpo_objective(p, None, batch, model=model, dpo=dpo)

    (ours, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params, packed)
    (theirs, their_metrics), their_grads = jax.value_and_grad(objective, has_aux=True)(params, plain)
    _close(ours, theirs, "loss")
    assert set(metrics) == set(their_metrics)
    for k in metrics:
        _close(metrics[k], their_metrics[k], k)
    for (path, g), h in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(their_grads), strict=True
    ):
        _close(g, h, jax.tree_util.keystr(path))
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(their_grads)) > 1e-3
    sums = pair_eval_sums(params, None, packed, model=model, dpo=dpo)
    their_sums = pair_eval_sums(params, None, plain, model=model, dpo=dpo)
    for k in their_sums:
        _close(sums[k], their_sums[k], k)


def test_a_lora_runs_packed_reference_is_its_base(model_and_params):
    model, params = model_and_params
    arrays = {k: v for k, v in _arrays(1).items() if not k.startswith("ref_")}
    plain, packed = _both(arrays)
    adapters = lora.init_lora(params, rank=2, targets=".*attn.*", rng=jax.random.key(1))
    adapters = jax.tree.map(lambda x: x + 0.05, adapters)
    for a, b in zip(
        reference_logps(model, params, packed), reference_logps(model, params, plain), strict=True
    ):
        _close(a, b, "reference")

    def objective(p, batch):
        return dpo_objective(p, params, batch, model=model, dpo=DPO())

    (ours, _), grads = jax.value_and_grad(objective, has_aux=True)(adapters, packed)
    (theirs, _), their_grads = jax.value_and_grad(objective, has_aux=True)(adapters, plain)
    _close(ours, theirs, "loss")
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(their_grads), strict=True):
        _close(g, h, "lora gradient")
    assert jax.tree.leaves(grads)


def test_packed_batches_resume_bit_exactly_and_keep_their_shape():
    arrays = _arrays(2)
    run = PairBatches(arrays, B, seed=5, packing=True, row_multiple=2)
    whole = [next(run) for _ in range(6)]
    resumed = PairBatches(arrays, B, seed=5, packing=True, row_multiple=2)
    for _ in range(3):
        next(resumed)
    state = resumed.get_state()
    again = PairBatches(arrays, B, seed=5, packing=True, row_multiple=2)
    again.set_state(state)
    for expected in whole[3:]:
        got = next(again)
        assert set(got) == set(expected)
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    rows, slots = packed_shape(arrays, B, 2)
    assert rows % 2 == 0 and all(b["tokens"].shape == (rows, L + 1) for b in whole)
    assert all(b["slots"].shape == (rows, slots) and b["slots"].sum() == 2 * B for b in whole)


def test_a_second_process_points_at_its_own_slots():
    arrays = _arrays(3)
    rows, slots = packed_shape(arrays, B // 2, 1)
    first = next(PairBatches(arrays, B, seed=1, process_index=0, process_count=2, packing=True))
    second = next(PairBatches(arrays, B, seed=1, process_index=1, process_count=2, packing=True))
    assert first["chosen_at"].max() < rows * slots <= second["chosen_at"].min()
    local = pack_pairs({k: v[:2] for k, v in arrays.items()}, rows, slots)
    assert local["slots"].sum() == 4


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"objective": "lm"}, "'train.dpo.packing': packs preference pairs: needs train.objective='dpo'"),
        ({"mode": "pmap"}, "'train.dpo.packing': needs parallel.mode='jit'"),
    ],
)
def test_bad_packing_combinations_fail_with_one_line(changes, needle):
    cfg = default_config()
    cfg.train.objective, cfg.train.dpo.data, cfg.train.dpo.packing = "dpo", "pairs.jsonl", True
    validate(cfg)
    if "objective" in changes:
        cfg.train.objective = changes["objective"]
    if "mode" in changes:
        cfg.parallel.mode = changes["mode"]
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        validate(cfg)
