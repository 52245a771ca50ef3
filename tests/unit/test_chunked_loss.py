"""model.loss_chunk: the chunked loss (no [B, T, V] logits) equals the full-logits loss, its gradients and
eval's per-token statistics within 1e-6 relative in float32, tied and untied, jitted and pmapped."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from codex_jax.compute import loss as loss_lib
from codex_jax.compute import step as step_lib
from codex_jax.compute.state import create_train_state
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params

T = 40  # not a multiple of the chunk: the last chunk is padded


def _model(tie: bool, chunk: int) -> Transformer:
    cfg = ModelConfig(
        num_layers=2, d_model=32, d_ff=64, num_heads=4, num_kv_heads=4, vocab_size=97, max_seq_len=64,
        tie_embeddings=tie, loss_chunk=chunk,
    )  # fmt: skip
    return Transformer(cfg)


def _batch(seed=0, rows=4):
    return jax.random.randint(jax.random.key(seed), (rows, T + 1), 0, 97)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _assert_grads_close(grads, reference):
    """Every leaf within 1e-6 relative; a leaf whose exact gradient is zero (the key bias: softmax
    ignores it) holds only rounding noise, allowed up to 1e-9 of the whole gradient's norm."""
    total = float(optax.tree.norm(reference))
    for (path, g0), g1 in zip(
        jax.tree_util.tree_leaves_with_path(reference), jax.tree.leaves(grads), strict=True
    ):
        error = float(np.linalg.norm(np.asarray(g1) - np.asarray(g0)))
        assert error <= 1e-6 * float(np.linalg.norm(g0)) + 1e-9 * total, jax.tree_util.keystr(path)


def _loss_and_grads(model, params, batch):
    inputs, targets = loss_lib.inputs_and_targets(batch)
    fn = lambda p: loss_lib.mean_loss(model, {"params": p}, inputs, targets)  # noqa: E731
    return jax.jit(jax.value_and_grad(fn))(params)


@pytest.mark.parametrize("tie,chunk", [(True, 8), (False, 16)])  # both heads, both chunk sizes
def test_chunked_loss_and_grads_match_full_logits(tie, chunk):
    full, chunked = _model(tie, 0), _model(tie, chunk)
    params = init_params(full.cfg, jax.random.key(1))
    assert loss_lib.chunks_apply(chunk, T) and not loss_lib.chunks_apply(0, T)
    loss0, grads0 = _loss_and_grads(full, params, _batch())
    loss1, grads1 = _loss_and_grads(chunked, params, _batch())
    assert _rel(loss1, loss0) <= 1e-6
    _assert_grads_close(grads1, grads0)
    assert ("lm_head" in params) == (not tie)


def test_chunked_eval_stats_and_weights():
    full, chunked = _model(False, 0), _model(False, 16)
    params = init_params(full.cfg, jax.random.key(2))
    inputs, targets = loss_lib.inputs_and_targets(_batch(3))
    loss0, correct0 = loss_lib.token_stats(full, {"params": params}, inputs, targets)
    loss1, correct1 = jax.jit(functools.partial(loss_lib.token_stats, chunked))(
        {"params": params}, inputs, targets
    )
    assert loss1.shape == (4, T) and _rel(loss1, loss0) <= 1e-6
    np.testing.assert_array_equal(correct1, correct0)
    # Weighted (loss masks): value and gradients of the weighted sum against the full logits.
    x, head = full.apply({"params": params}, inputs, hidden=True)
    weights = (jnp.arange(T) % 3 != 0).astype(jnp.float32)[None].repeat(4, 0)

    def reference(x, head):
        logits = jnp.einsum("btd,vd->btv", x, head, preferred_element_type=jnp.float32)
        return (loss_lib.cross_entropy(logits, targets)[0] * weights).sum()

    def chunked_sum(x, head):
        return loss_lib.chunked_loss_sum(x, head, targets, weights, 16)

    v0, g0 = jax.value_and_grad(reference, argnums=(0, 1))(x, head)
    v1, g1 = jax.jit(jax.value_and_grad(chunked_sum, argnums=(0, 1)))(x, head)
    assert _rel(v1, v0) <= 1e-6 and _rel(g1[0], g0[0]) <= 1e-6 and _rel(g1[1], g0[1]) <= 1e-6


def test_chunked_train_and_eval_step_under_pmap():
    """The pmapped step (all-reduced gradients) with and without chunks: same loss and update."""
    n = 2
    tx = optax.adamw(1e-3)
    results = []
    for chunk in (0, 8):
        model = _model(True, chunk)
        state = create_train_state(init_params(model.cfg, jax.random.key(4)), tx, 0)
        state = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), state)
        batch = _batch(5).reshape(n, 2, T + 1)
        train = jax.pmap(functools.partial(step_lib.train_step, model=model, tx=tx, axis_name="b"), "b")
        evals = jax.pmap(functools.partial(step_lib.eval_step, model=model, axis_name="b"), "b")
        new_state, metrics = train(state, batch)
        results.append((metrics["loss"][0], new_state.params, evals(new_state.params, batch)))
    (l0, p0, e0), (l1, p1, e1) = results
    assert _rel(l1, l0) <= 1e-6
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
    assert _rel(flat(p1), flat(p0)) <= 1e-6  # one vector: Adam turns the key bias's noise into +-lr
    assert _rel(e1["loss_sum"], e0["loss_sum"]) <= 1e-6 and float(e1["tokens"][0]) == 2 * 2 * T
