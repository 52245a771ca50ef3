"""SFT on every family of issue 25: the chat fixtures through a chat tokenizer's template into masked,
segment-packed rows (data/pipeline.py), a few steps of the real train step, and the held-in loss goes down."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sft_helpers import chat_tokenizer_folder
from test_hf_parity import NEW_FAMILIES, _hf_config
from test_sft_data import sft_config

from codex_jax.compute.batch import MASK, SEGMENTS, TOKENS
from codex_jax.compute.optim import OptimizerSpec, make_optimizer
from codex_jax.compute.parallel import JitRunner, make_mesh
from codex_jax.compute.state import create_train_state
from codex_jax.config.schema import default_config
from codex_jax.data.iterators import make_train_iterator
from codex_jax.data.pipeline import prepare_data
from codex_jax.evaluate import evaluate
from codex_jax.interop import hf_config
from codex_jax.models.transformer import Transformer, init_params

pytest.importorskip("transformers")

SEQ = 64


@pytest.fixture(scope="module")
def chat_rows(tmp_path_factory):
    """``(rows, vocab size)``: the chat fixtures rendered by a ChatML template, masked and packed."""
    tok = chat_tokenizer_folder(tmp_path_factory.mktemp("tok"))
    bundle = prepare_data(
        sft_config(tok, packing="segments", seq_len=SEQ), tmp_path_factory.mktemp("run"), True
    )
    return bundle.train_windows, bundle.tokenizer.vocab_size


def _spec():
    c = default_config().train
    c.steps, c.warmup_steps, c.learning_rate = 10, 1, 1e-2
    return OptimizerSpec.from_mapping(c)


@pytest.mark.parametrize("kind", NEW_FAMILIES)
def test_sft_steps_on_chat_data_lower_the_loss(kind, chat_rows):
    rows, vocab = chat_rows
    assert set(rows) == {TOKENS, MASK, SEGMENTS} and 0 < rows[MASK].mean() < 1  # masked: answers only
    cfg = hf_config.config_from_hf(_hf_config(kind).to_dict(), vocab_size=vocab, max_seq_len=128)
    assert cfg.family == hf_config.HF_TYPES[kind].family
    tx = make_optimizer(_spec())
    runner = JitRunner(Transformer(cfg), tx, make_mesh(num_devices=1))
    state = runner.init_state(lambda: create_train_state(init_params(cfg, jax.random.key(0)), tx, 0))
    it = make_train_iterator(rows, batch_size=4, seed=0)
    batches = [next(it) for _ in range(2)]
    before = evaluate(runner, runner.params(state), batches)["loss"]
    losses = []
    for b in batches * 2:  # 4 steps
        state, m = runner.train_step(state, runner.put_batch(b))
        losses.append(float(m["loss"]))
    after = evaluate(runner, runner.params(state), batches)["loss"]
    print(f"{kind}: held-in loss {before:.3f} -> {after:.3f}; step losses {np.round(losses, 3).tolist()}")
    assert np.isfinite(losses).all()
    assert after < before - 0.5
