"""Weight-only quantization (models/quant.py): NF4 levels, round-off within each format's bound on
random and trained-looking weights, a quantized-base forward near the full-precision one, LoRA
training over an NF4 base (one device and FSDP), merge through a quantized base."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_llama
from flax import traverse_util

from codex_jax.compute.optim import OptimizerSpec, make_optimizer
from codex_jax.compute.parallel import JitRunner, make_mesh
from codex_jax.compute.state import create_train_state
from codex_jax.config.schema import default_config
from codex_jax.errors import UserError
from codex_jax.models import lora, quant
from codex_jax.models.families import FAMILIES
from codex_jax.models.transformer import Transformer, init_params

LLAMA = tiny_llama(lora_alpha=8.0)
GPT2 = tiny_llama(family="gpt2", num_kv_heads=4, tie_embeddings=True, lora_alpha=8.0)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 12)), jnp.int32)


def test_nf4_levels_are_the_papers():
    levels = quant.nf4_levels()
    assert levels.shape == (16,) and np.all(np.diff(levels) > 0)
    assert levels[0] == -1.0 and levels[-1] == 1.0 and 0.0 in levels
    # QLoRA paper, appendix E (the NF4 data type's values)
    np.testing.assert_allclose(
        levels[[1, 6, 8, 14]], [-0.6961928, -0.0910500, 0.0795803, 0.7229568], atol=1e-6
    )


def _weights(kind: str, shape=(512, 192), seed=0):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.normal(0, 0.02, shape).astype(np.float32)
    # trained-looking: heavy tails (Student t, 3 dof), a few outlier input rows, uneven column scales
    w = rng.standard_t(3, shape) * 0.02 * rng.uniform(0.5, 2.0, shape[1])
    w[rng.choice(shape[0], 4, replace=False)] *= 8
    return w.astype(np.float32)


# relative RMS error, measured (block 64): int8 0.0060 / 0.0128, NF4 0.092 / 0.133; the max bound is exact
RMS = {
    ("int8", "normal"): 0.007,
    ("int8", "trained"): 0.015,
    ("nf4", "normal"): 0.1,
    ("nf4", "trained"): 0.15,
}


@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("kind", ["normal", "trained"])
def test_round_off_within_the_formats_bound(fmt, kind):
    w = _weights(kind)
    q = quant.quantize(jnp.asarray(w), fmt, 64)
    assert quant.format_of(q) == fmt and quant.kernel_shape(q) == w.shape
    assert q["codes"].dtype == (jnp.int8 if fmt == "int8" else jnp.uint8)
    assert q["codes"].shape == ((512 if fmt == "int8" else 256), 192) and q["scales"].shape == (8, 192)
    back = np.asarray(quant.dequantize(q))
    absmax = np.abs(w.reshape(8, 64, 192)).max(1)
    err = np.abs(back - w).reshape(8, 64, 192)
    assert np.all(err <= absmax[:, None] * quant.max_error(fmt) * (1 + 1e-5))
    rel_rms = np.sqrt(np.mean((back - w) ** 2) / np.mean(w**2))
    assert rel_rms < RMS[fmt, kind]
    np.testing.assert_allclose(np.abs(back.reshape(8, 64, 192)).max(1), absmax, rtol=1e-6)  # absmax kept


def test_levels_round_trip_exactly():
    levels = quant.nf4_levels()
    codes = np.random.default_rng(1).integers(0, 16, (128, 8))
    scale = np.linspace(0.5, 2.0, 8, dtype=np.float32)
    w = levels[codes] * scale
    w[0] = scale  # every column's block holds its absmax
    q = quant.quantize(jnp.asarray(w), "nf4", 128)
    np.testing.assert_array_equal(np.asarray(quant.dequantize(q)), w)
    z = quant.quantize(jnp.zeros((4, 3)), "int8", 2)  # all-zero blocks stay zero
    np.testing.assert_array_equal(np.asarray(quant.dequantize(z)), np.zeros((4, 3)))


def test_block_zero_is_per_channel():
    w = _weights("trained", (96, 8))
    q = quant.quantize(jnp.asarray(w), "int8", 0)
    assert q["scales"].shape == (1, 8)
    err = np.abs(np.asarray(quant.dequantize(q)) - w)
    assert np.all(err <= np.abs(w).max(0) * quant.max_error("int8") * (1 + 1e-5))


def test_bad_format_and_block_sizes():
    w = jnp.ones((96, 8))
    with pytest.raises(UserError, match="64 does not divide a kernel's 96 input rows"):
        quant.quantize(w, "nf4", 64)
    with pytest.raises(UserError, match="positive even"):
        quant.quantize(w, "nf4", 3)
    with pytest.raises(UserError, match="'int4': use one of int8, nf4"):
        quant.quantize(w, "int4", 32)
    with pytest.raises(UserError, match="does not divide"):
        quant.quantize_tree(init_params(LLAMA, jax.random.key(0)), "int8", 128)


# ------------------------------------------------------------------------------------- the model


def _logits(cfg, params, adapters=None):
    variables = {"params": params} if adapters is None else {"params": params, "lora": adapters}
    return np.asarray(jax.jit(Transformer(cfg).apply)(variables, TOKENS))


def test_quantized_tables_look_up_and_round_trip():
    """Embedding tables are quantized as the head's kernel [D, V]; a lookup equals the dequantized rows."""
    for cfg in (LLAMA, GPT2):
        params = init_params(cfg, jax.random.key(0))
        q = quant.quantize_tree(params, "nf4", 16, other_dtype=jnp.float32, tables=True)
        flat, flat_q = (traverse_util.flatten_dict(t, sep="/") for t in (params, q))
        flat_back = traverse_util.flatten_dict(quant.dequantize_tree(q), sep="/")
        tables = [k for k in quant.TABLE_KEYS if k in flat]
        assert tables == (["embed/embedding"] if cfg.tie_embeddings else list(quant.TABLE_KEYS))
        for key in tables:
            table_q = {n: flat_q[f"{key}/{n}"] for n in ("codes", "scales")}
            assert table_q["codes"].shape == (cfg.d_model // 2, cfg.vocab_size)
            blocks = (cfg.vocab_size, -1, 16)  # a token's row, in blocks of 16
            err = np.abs(np.asarray(flat_back[key]) - np.asarray(flat[key])).reshape(blocks).max(-1)
            bound = quant.max_error("nf4") * np.abs(np.asarray(flat[key])).reshape(blocks).max(-1)
            assert np.all(err <= bound * 1.0001)
            got = quant.take(table_q, TOKENS, jnp.float32)
            np.testing.assert_array_equal(got, np.asarray(flat_back[key])[TOKENS])
        assert {k for k in flat_back if k.endswith(("codes", "scales"))} == set()


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_quantized_forward_near_full_precision(cfg, fmt):
    params = init_params(cfg, jax.random.key(0))
    tables = fmt == "nf4"  # with the embedding and head quantized too, for one format
    q = quant.quantize_tree(params, fmt, 16, other_dtype=jnp.float32, tables=tables)
    assert quant.quantized_format(q) == fmt
    assert quant.is_quantized(q["embed"]["embedding"]) == tables
    assert lora.kernel_paths(q) == lora.kernel_paths(params)
    full, approx = _logits(cfg, params), _logits(cfg, q)
    # relative RMS error of the logits, measured on the llama: int8 0.16%, NF4 2.6% (kernels only)
    rel = np.sqrt(np.mean((approx - full) ** 2) / np.mean(full**2))
    assert rel < (0.01 if fmt == "int8" else 0.15), rel
    np.testing.assert_allclose(approx, _logits(cfg, quant.dequantize_tree(q)), atol=1e-5)


def _train_cfg():
    c = default_config().train
    c.steps, c.warmup_steps, c.learning_rate = 10, 2, 3e-2
    return OptimizerSpec.from_mapping(c)


def _batches(n, batch, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, LLAMA.vocab_size, (batch, 17), dtype=np.int32) for _ in range(n)]


@pytest.mark.parametrize("mesh", [(1, 1), (1, 8)], ids=["one", "fsdp1x8_tables"])
def test_lora_over_nf4_base_trains(mesh):
    model, tx = Transformer(LLAMA), make_optimizer(_train_cfg())
    base = init_params(LLAMA, jax.random.key(0))
    frozen = quant.quantize_tree(base, "nf4", 16, tables=mesh != (1, 1))
    before = jax.tree.map(np.array, frozen)
    runner = JitRunner(
        model, tx, make_mesh(*mesh) if mesh != (1, 1) else make_mesh(num_devices=1), fsdp_min_size=256
    )
    runner.set_frozen(frozen)
    adapters = lora.init_lora(frozen, 4, lora.DEFAULT_TARGETS, jax.random.key(1))
    assert jax.tree.map(jnp.shape, adapters) == jax.tree.map(
        jnp.shape, lora.init_lora(base, 4, lora.DEFAULT_TARGETS, jax.random.key(1))
    )
    state = runner.init_state(lambda: create_train_state(adapters, tx, 0))
    losses = []
    for b in _batches(2, 8) * 3:
        state, m = runner.train_step(state, runner.put_batch(b))
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.05, losses
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(runner.frozen), before)
    if mesh == (1, 8):
        assert "fsdp" in tuple(runner.frozen["layers_0"]["mlp"]["up_proj"]["kernel"]["codes"].sharding.spec)
    trained = jax.device_get(state.params)
    merged = lora.merge(frozen, trained, LLAMA.lora_alpha)  # dequantized to bfloat16, adapters folded in
    assert quant.quantized_format(merged) is None
    assert merged["layers_0"]["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16
    np.testing.assert_allclose(_logits(LLAMA, merged), _logits(LLAMA, frozen, trained), atol=0.05)


def test_backward_keeps_no_dequantized_kernel():
    """The dequantization is rematerialized: the residuals of the VJP hold no float [in, out] kernel."""
    w = quant.quantize(jnp.asarray(_weights("normal", (256, 512))), "nf4", 64)
    x = jnp.ones((4, 256), jnp.float32)
    _, vjp = jax.vjp(lambda x: quant.matmul(x, w, jnp.float32), x)
    shapes = {(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(vjp)}
    assert ((256, 512), jnp.dtype(jnp.float32)) not in shapes


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_runs_over_an_nf4_base(family):
    """Measured relative RMS error of the logits (block 16): 0.5% (gemma) to 19% (gemma3, soft-capped)."""
    cfg = tiny_llama(family=family, num_kv_heads=2)
    params = init_params(cfg, jax.random.key(0))
    q = quant.quantize_tree(params, "nf4", 16, other_dtype=jnp.float32)
    full, approx = _logits(cfg, params), _logits(cfg, q)
    assert np.sqrt(np.mean((approx - full) ** 2) / np.mean(full**2)) < 0.25


def _adapter_grad_step(fmt: str, **fields):
    """A LoRA gradient over a frozen base in ``fmt`` (a quantized format or 'bfloat16') of a 4-layer
    llama whose kernels dominate: ``(cfg, base, adapters, jitted grad)``."""
    cfg = tiny_llama(num_layers=4, d_model=256, d_ff=1024, dtype="bfloat16", lora_alpha=8.0, **fields)
    params = init_params(cfg, jax.random.key(0))
    if fmt in quant.FORMATS:
        base = quant.quantize_tree(params, fmt, 64)
    else:
        base = jax.tree.map(lambda x: x.astype(fmt), params)
    adapters = lora.init_lora(params, 4, lora.DEFAULT_TARGETS, jax.random.key(1))
    adapters = jax.tree.map(lambda b: b + 0.01, adapters)  # lora_b != 0: every path carries gradient

    def loss(a, base, tokens):
        logits = Transformer(cfg).apply({"params": base, "lora": a}, tokens)
        targets = jnp.roll(tokens, -1, axis=1)
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()

    return cfg, base, adapters, jax.jit(jax.grad(loss))


@pytest.mark.parametrize("fmt", ["nf4", "bfloat16"])
def test_frozen_base_backward_holds_one_layer_in_float32(fmt):
    """XLA's CPU pipeline merged the backward's dequantization (or bfloat16 -> float32 cast) with the
    forward's, so every layer's kernel lived in float32 from forward to backward: 15.9 MiB of temporaries
    here, the whole base. With the conditional (models/quant._guarded) measured 2.4 MiB, below one layer."""
    cfg, base, adapters, grad = _adapter_grad_step(fmt, frozen_base=True, grad_barriers="on")
    temp = grad.lower(adapters, base, TOKENS[:1]).compile().memory_analysis().temp_size_in_bytes
    layer_f32 = 4 * sum(
        np.prod(quant.kernel_shape(k) if quant.is_quantized(k) else k.shape)
        for k in jax.tree.leaves(base["layers_0"], is_leaf=quant.is_quantized)
        if quant.is_quantized(k) or k.ndim == 2
    )
    assert temp < layer_f32, (temp, layer_f32)


def test_frozen_base_gives_the_same_adapter_gradients():
    """``frozen_base`` (a LoRA run's model) changes where the kernel's cast happens, not the gradients."""
    _, base, adapters, frozen = _adapter_grad_step("bfloat16", frozen_base=True, grad_barriers="on")
    _, _, _, plain = _adapter_grad_step("bfloat16", frozen_base=False, grad_barriers="off")
    got, want = frozen(adapters, base, TOKENS[:1]), plain(adapters, base, TOKENS[:1])
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-2, atol=1e-6), got, want)


@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_column_chunks_give_the_same_product_and_gradient(fmt):
    """A wide quantized kernel (the LM head) dequantized a chunk of columns at a time: the same product,
    the same input gradient (float32 accumulation), one chunk's columns at a time."""
    assert [quant.column_chunks(d, 8) for d in (8, 32, 97, 30, 0)] == [1, 4, 1, 5, 1]
    w = quant.quantize(jnp.asarray(_weights("normal", (64, 96))), fmt, 16)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5, 64)), jnp.float32)
    g = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5, 96)), jnp.float32)

    def product_and_grad(most):
        y, vjp = jax.vjp(lambda x: quant.matmul(x, w, jnp.float32, most_columns=most), x)
        return y, vjp(g)[0]

    (y1, dx1), (y4, dx4) = product_and_grad(0), product_and_grad(24)
    np.testing.assert_allclose(y4, y1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx4, dx1, rtol=1e-5, atol=1e-5)


def test_hf_import_quantizes_each_weight_as_it_is_read(tmp_path):
    """A Hugging Face base is quantized tensor by tensor while it is read (no full-precision copy of the
    whole base): the same bits as quantizing the imported tree."""
    from codex_jax.interop import hf_weights

    params = init_params(LLAMA, jax.random.key(0))
    hf_weights.export_checkpoint(Transformer(LLAMA), params, tmp_path)
    _, full = hf_weights.import_checkpoint(tmp_path)
    _, streamed = hf_weights.import_checkpoint(tmp_path, form=quant.leaf_form("nf4", 16, tables=True))
    assert quant.is_quantized(streamed["lm_head"]) and quant.is_quantized(
        streamed["layers_1"]["mlp"]["up_proj"]["kernel"]
    )
    jax.tree.map(np.testing.assert_array_equal, streamed, quant.quantize_tree(full, "nf4", 16, tables=True))
