"""The Transformer: shapes, KV-cache decoding, masks, remat, dtypes, config and presets."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codex_jax import plugins
from codex_jax.errors import UserError
from codex_jax.models import registry
from codex_jax.models.config import ModelConfig
from codex_jax.models.sizes import count_params, flops_per_token
from codex_jax.models.transformer import Transformer, init_cache, init_params

TINY = dict(num_layers=2, num_heads=4, d_model=64, d_ff=128, vocab_size=256, max_seq_len=64)


def _cfg(family, **extra):
    kv = 2 if family == "llama" else 4
    return ModelConfig(**{**TINY, "family": family, "num_kv_heads": kv, **extra})


def random_params(cfg, seed=0):
    """Parameters from numpy (compiling jax's RNG on CPU costs seconds); norm scales near 1."""
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return jnp.asarray(base + rng.normal(0.0, 0.05, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _tokens(B=2, T=10, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, TINY["vocab_size"], (B, T)), jnp.int32)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_shapes_and_param_names(family):
    cfg = _cfg(family, tie_embeddings=family == "gpt2")
    params = init_params(cfg, jax.random.key(0)) if family == "llama" else random_params(cfg)
    logits = jax.jit(Transformer(cfg).apply)({"params": params}, _tokens())
    assert logits.shape == (2, 10, 256) and logits.dtype == jnp.float32
    assert ("pos_embed" in params) == (family == "gpt2")
    assert ("lm_head" in params) == (family == "llama")
    mlp = set(params["layers_0"]["mlp"])
    assert mlp == ({"fc_in", "fc_out"} if family == "gpt2" else {"gate_proj", "up_proj", "down_proj"})
    assert params["layers_1"]["attn"]["k_proj"]["kernel"].shape == (64, cfg.num_kv_heads * 16)
    assert count_params(params) > 0 and flops_per_token(cfg, count_params(params), 10) > 0


@pytest.mark.parametrize(
    "family,extra",
    [
        ("gpt2", {}),
        ("llama", {}),
        ("llama", {"sliding_window": 3}),
        ("llama", {"head_dim": 24, "attention_bias": True}),
    ],
)
def test_kv_cache_decode_equals_full_forward(family, extra):
    cfg = _cfg(family, **extra)
    model = Transformer(cfg)
    variables = {"params": random_params(cfg, 1)}
    tokens = _tokens(T=10)
    apply = jax.jit(model.apply)
    full = apply(variables, tokens)
    cache = init_cache(cfg, 2, 12)
    logits, cache = apply(variables, tokens[:, :6], kv_cache=cache, cache_index=0)
    steps = [logits]
    for t in range(6, 10):
        step, cache = apply(
            variables,
            tokens[:, t : t + 1],
            positions_BxT=jnp.full((2, 1), t),
            kv_cache=cache,
            cache_index=jnp.int32(t),
        )
        steps.append(step)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5)


def test_explicit_mask_hides_padding():
    cfg = _cfg("llama")
    model = Transformer(cfg)
    variables = {"params": random_params(cfg, 2)}
    tokens = _tokens(B=1, T=6)
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), tokens], axis=1)
    mask = jnp.broadcast_to(jnp.arange(9)[None, None, :] >= 3, (1, 9, 9))
    positions = jnp.maximum(jnp.arange(9) - 3, 0)[None]
    apply = jax.jit(model.apply)
    out = apply(variables, padded, positions_BxT=positions, mask_BxTxS=mask)
    np.testing.assert_allclose(out[:, 3:], apply(variables, tokens), atol=2e-5)


def test_remat_policies_same_outputs_and_grads():
    base = _cfg("llama", dropout=0.1)
    params = random_params(base, 3)
    tokens = _tokens()

    def loss(p, cfg):
        logits = Transformer(cfg).apply(
            {"params": p}, tokens, deterministic=False, rngs={"dropout": jax.random.key(4)}
        )
        return jnp.mean(
            jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0]
        )

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    ref_loss, ref_grads = grad_fn(params, base)
    for policy in ("full", "dots_saveable"):
        got_loss, got_grads = grad_fn(params, base.replace(remat=policy))
        np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got_grads, ref_grads)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bf16_compute_returns_float32_logits(family):
    cfg = _cfg(family, dtype="bfloat16")
    params = random_params(cfg, 5)
    assert params["embed"]["embedding"].dtype == jnp.float32
    logits = jax.jit(Transformer(cfg).apply)({"params": params}, _tokens())
    ref = jax.jit(Transformer(cfg.replace(dtype="float32")).apply)({"params": params}, _tokens())
    assert logits.dtype == jnp.float32
    assert np.abs(logits - ref).max() < 0.05
    half = random_params(cfg.replace(param_dtype="bfloat16"), 5)
    assert half["embed"]["embedding"].dtype == jnp.bfloat16


def test_config_validation_and_dict_round_trip():
    cfg = ModelConfig(family="llama", rope_llama3_scaling=(8.0, 1.0, 4.0, 8192), sliding_window=16)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict({**cfg.to_dict(), "not_a_field": 1}) == cfg
    with pytest.raises(UserError, match="family"):
        ModelConfig(family="bert")
    with pytest.raises(UserError, match="num_kv_heads"):
        ModelConfig(num_heads=4, num_kv_heads=3)


def test_presets_build_configs():
    assert {"gpt2-small", "gpt2-medium", "llama-tiny", "tinyllama-1.1b"} <= set(registry.names())
    small = registry.config("gpt2-small")
    assert (small.num_layers, small.d_model, small.vocab_size) == (12, 768, 50257)
    tiny = registry.config("llama-tiny", vocab_size=300)
    assert tiny.family == "llama" and tiny.vocab_size == 300
    shape = jax.eval_shape(lambda: init_params(registry.config("gpt2-small"), jax.random.key(0)))
    assert 124_000_000 < count_params(shape) < 125_000_000  # GPT-2 small: 124.4M
    with pytest.raises(UserError, match="unknown model preset"):
        registry.get("nope")


def test_plugins_extend_and_broken_plugins_are_recorded(monkeypatch):
    module = types.ModuleType("fake_codex_presets")
    module.GOOD = dict(registry.get("llama-tiny"), num_layers=3)
    module.make = lambda: dict(registry.get("gpt2-tiny"), d_model=96, num_heads=4)
    module.BAD_FIELD = {"family": "llama", "wings": 2}
    monkeypatch.setitem(sys.modules, "fake_codex_presets", module)
    points = [
        importlib.metadata.EntryPoint(name, value, plugins.MODELS)
        for name, value in [
            ("plugin-good", "fake_codex_presets:GOOD"),
            ("plugin-call", "fake_codex_presets:make"),
            ("plugin-field", "fake_codex_presets:BAD_FIELD"),
            ("plugin-missing", "no_such_module_xyz:X"),
            ("gpt2-small", "fake_codex_presets:GOOD"),
        ]
    ]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: points)
    plugins.reload()
    try:
        assert registry.config("plugin-good").num_layers == 3
        assert registry.config("plugin-call").d_model == 96
        errors = registry.plugin_errors()
        assert set(errors) == {"plugin-field", "plugin-missing", "gpt2-small"}
        assert "wings" in errors["plugin-field"] and "ModuleNotFoundError" in errors["plugin-missing"]
        assert registry.config("gpt2-small").num_layers == 12  # the built-in wins
        with pytest.raises(UserError, match="plugin failed"):
            registry.get("plugin-missing")
    finally:
        monkeypatch.undo()
        plugins.reload()
