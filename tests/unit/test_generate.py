"""KV-cache generation: ragged prompts, padding, EOS, sampling filters, compiles, complete()."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codex_jax import generate as gen
from codex_jax.errors import UserError
from codex_jax.generate import Sampler, complete, generate, left_pad
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params

CFG = ModelConfig(
    family="llama",
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    d_model=64,
    d_ff=128,
    vocab_size=256,
    max_seq_len=64,
)


def random_params(cfg, seed=0):
    """Parameters from numpy (compiling jax's RNG on CPU costs seconds); norm scales near 1."""
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return jnp.asarray(base + rng.normal(0.0, 0.1, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def lm():
    return Transformer(CFG), random_params(CFG)


ROWS = [list(range(10, 19)), [40, 41, 42, 43]]


def test_ragged_rows_match_rows_alone_and_right_padding(lm):
    model, params = lm
    prompts, lengths = left_pad(ROWS, pad_id=7)
    batch = np.asarray(generate(model, params, prompts, 12, prompt_lengths=lengths))
    for row, tokens in enumerate(ROWS):
        alone = np.asarray(generate(model, params, [tokens], 12))[0]
        np.testing.assert_array_equal(batch[row], alone)
    right = np.full_like(prompts, 7)
    for row, tokens in enumerate(ROWS):
        right[row, : len(tokens)] = tokens
    np.testing.assert_array_equal(
        generate(model, params, right, 12, prompt_lengths=lengths, padding="right"), batch
    )


def test_eos_stops_a_row_and_pads_with_eos(lm):
    model, params = lm
    prompts, lengths = left_pad(ROWS)
    free = np.asarray(generate(model, params, prompts, 12, prompt_lengths=lengths))
    eos = int(free[1, 3])
    stop = list(free[1]).index(eos)
    out = np.asarray(generate(model, params, prompts, 12, prompt_lengths=lengths, eos_id=eos))
    np.testing.assert_array_equal(out[1, : stop + 1], free[1, : stop + 1])
    assert (out[1, stop:] == eos).all()
    if eos not in free[0]:
        np.testing.assert_array_equal(out[0], free[0])


def test_one_compile_for_same_shapes(lm):
    model, params = lm
    generate(model, params, [[1, 2, 3]], 5)
    before = gen._generate._cache_size()
    generate(model, params, [[9, 8, 7]], 5, rng=jax.random.key(3))
    assert gen._generate._cache_size() == before


def test_sampling_settings(lm):
    model, params = lm
    prompts = [ROWS[0]]
    greedy = np.asarray(generate(model, params, prompts, 8))
    np.testing.assert_array_equal(generate(model, params, prompts, 8, temperature=1.0, top_k=1), greedy)
    np.testing.assert_array_equal(generate(model, params, prompts, 8, temperature=1.0, top_p=1e-6), greedy)
    a = np.asarray(generate(model, params, prompts, 8, temperature=5.0, rng=jax.random.key(1)))
    b = np.asarray(generate(model, params, prompts, 8, temperature=5.0, rng=jax.random.key(1)))
    c = np.asarray(generate(model, params, prompts, 8, temperature=5.0, rng=jax.random.key(2)))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_sampler_filters_respect_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.05, 0.4, 0.3, 0.2, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 300)

    def draws(sampler):
        return set(np.asarray(jax.vmap(lambda k: sampler(logits, k))(keys)).ravel().tolist())

    assert draws(Sampler(temperature=1.0, top_k=2)) == {1, 2}
    assert draws(Sampler(temperature=1.0, top_p=0.65)) == {1, 2}  # 0.4 + 0.3 reaches 0.65
    assert draws(Sampler(temperature=1.0, top_p=0.3)) == {1}


class ByteTokenizer:
    eos_id = 255

    def encode(self, text):
        return list(text.encode("latin-1"))

    def decode(self, ids):
        return bytes(ids).decode("latin-1")


def test_complete_decodes_up_to_eos(lm):
    model, params = lm
    tok = ByteTokenizer()
    ids = tok.encode("def f(")
    expected = np.asarray(generate(model, params, [ids], 6, eos_id=255))[0].tolist()
    expected = expected[: expected.index(255)] if 255 in expected else expected
    assert complete(model, params, tok, "def f(", 6) == tok.decode(expected)


def test_gpt2_prompt_longer_than_positions_is_refused():
    cfg = ModelConfig(
        family="gpt2",
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        d_model=16,
        d_ff=32,
        vocab_size=32,
        max_seq_len=8,
    )
    with pytest.raises(UserError, match="max_seq_len"):
        generate(Transformer(cfg), {}, [[1] * 6], 4)
