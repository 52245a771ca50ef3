"""model.attention_impl='auto': the kernel per platform, the logged choice and fallback reasons, on CPU the
causal query blocks with XLA's logits; the blocked attention equals XLA's in value and gradients (any
length, windowed or not, causal blocks or recomputed blocks in a loop)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codex_jax.models import attention
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params

LOGGER = "codex_jax.models.attention"


@pytest.mark.parametrize(
    "platform, seq_len, changes, expected, reason",
    [
        ("cpu", 64, {}, "blocked", "causal blocks of 32 queries"),
        ("cpu", 500, {"sliding_window": 64}, "blocked", "causal blocks of 62 queries"),
        ("cpu", 1000, {}, "blocked", "blocks of 256 queries, recomputed in backward"),
        ("cpu", 1024, {"attention_impl": "xla"}, "xla", "model.attention_impl"),
        ("gpu", 1024, {"dtype": "bfloat16"}, "cudnn", "GPU"),
        ("gpu", 1024, {}, "xla", "bfloat16/float16"),
        ("gpu", 1024, {"dtype": "bfloat16", "head_dim": 256}, "xla", "head_dim"),
        ("tpu", 1024, {}, "pallas", "TPU"),
        ("tpu", 1000, {}, "xla", "multiple of 128"),
        ("tpu", 1024, {"sliding_window": 64}, "xla", "sliding_window"),
        ("tpu", 1024, {"attention_impl": "xla"}, "xla", "model.attention_impl"),
    ],
)
def test_choice_per_platform(platform, seq_len, changes, expected, reason):
    impl, why = attention.choose(ModelConfig(**changes), platform, seq_len)
    assert impl == expected and reason in why


@pytest.mark.parametrize(
    "platform, expected, reason",
    [
        ("cpu", "blocked", "recomputed in backward"),
        ("gpu", "xla", "packed segments"),
        ("tpu", "pallas", "TPU"),
    ],
)
def test_choice_for_packed_rows(platform, expected, reason):
    impl, why = attention.choose(ModelConfig(dtype="bfloat16"), platform, 1024, packed=True)
    assert impl == expected and reason in why


def test_choice_and_fallback_are_logged(caplog):
    attention._log_choice.cache_clear()
    cfg = ModelConfig(num_layers=1, d_model=32, d_ff=64, vocab_size=64, max_seq_len=16)
    assert cfg.attention_impl == "auto"
    model, xla = Transformer(cfg), Transformer(cfg.replace(attention_impl="xla"))
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        logits = model.apply({"params": params}, tokens)
    assert "attention on cpu, 16 positions: blocked: cpu: causal blocks of 32 queries" in caplog.text
    np.testing.assert_allclose(logits, xla.apply({"params": params}, tokens), rtol=1e-5, atol=1e-5)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert attention.resolve(cfg, "tpu", 1000).attention_impl == "xla"
        assert attention.resolve(cfg, "tpu", 1024).attention_impl == "pallas"
    warning, info = caplog.records
    assert warning.levelno == logging.WARNING
    assert "xla (fallback): sequence length 1000" in warning.getMessage()
    assert info.levelno == logging.INFO and "1024 positions: pallas: TPU" in info.getMessage()


@pytest.mark.parametrize(
    "window, length, recompute, packed",
    [(0, 32, False, False), (12, 30, True, False), (0, 30, True, True), (12, 32, False, True)],
)
def test_blocked_attention_matches_xla(window, length, recompute, packed, monkeypatch):
    monkeypatch.setattr(attention, "CAUSAL_BLOCKS_UP_TO", length - 1 if recompute else length)
    keys = jax.random.split(jax.random.key(2), 3)
    q = jax.random.normal(keys[0], (2, length, 4, 8))
    k, v = (jax.random.normal(key, (2, length, 2, 8)) for key in keys[1:])  # grouped-query: 4 / 2 heads
    local = (window - 1, 0) if window else None
    # packed rows: segments of 5, 11, ... tokens (crossing the blocks of 8), then padding (segment 0)
    ends = np.array([5, 16, 19, 27])
    segments_BxT = (np.arange(length)[None, :] >= ends[:, None]).sum(0) + 1 if packed else None
    if packed:
        segments_BxT = jnp.asarray(np.stack([np.where(segments_BxT > 4, 0, segments_BxT), segments_BxT % 3]))
    mask = None if segments_BxT is None else (segments_BxT[:, :, None] == segments_BxT[:, None, :])[:, None]

    def xla(q, k, v):
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, local_window_size=local)
        return jnp.square(out).sum()

    def blocked(q, k, v):
        out = attention.blocked_attention(q, k, v, window, block=8, segments_BxT=segments_BxT)
        return jnp.square(out).sum()

    v0, g0 = jax.value_and_grad(xla, argnums=(0, 1, 2))(q, k, v)
    v1, g1 = jax.jit(jax.value_and_grad(blocked, argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    for a, b in zip(g1, g0, strict=True):
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-5


def test_long_sequences_keep_no_probabilities_for_backward():
    """Beyond CAUSAL_BLOCKS_UP_TO the blocks are recomputed in backward: the compiled gradient's temporary
    memory stays far below XLA's, which keeps [B, N, T, T] float32 probabilities (16 MiB here)."""
    shape = jax.ShapeDtypeStruct((2, 1024, 2, 8), jnp.float32)

    def temp_bytes(attend):
        def loss(q, k, v):
            return jnp.square(attend(q, k, v)).sum()

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    xla = temp_bytes(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
    blocked = temp_bytes(attention.blocked_attention)
    assert xla > 16 * 2**20 and blocked < xla / 3, (blocked, xla)
