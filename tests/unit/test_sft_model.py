"""SFT losses (issue 14): masked loss equals transformers' with labels -100, packed equals unpacked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_helpers import random_hf_model
from sft_helpers import SFT, chat_tokenizer_folder

from codex_jax.compute.batch import MASK, SEGMENTS, TOKENS, model_inputs
from codex_jax.compute.loss import loss_sum, token_stats
from codex_jax.corpus.examples import ExampleFields
from codex_jax.corpus.sources import read_source
from codex_jax.data.packing import START, TRAINED, pack_examples
from codex_jax.interop import hf_weights
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params
from codex_jax.tokenizers import load_tokenizer
from codex_jax.tokenizers.chat import encode_example

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 384
HF = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """(ids, mask) of 5 chat examples, encoded with a local ChatML tokenizer."""
    tok = load_tokenizer(chat_tokenizer_folder(tmp_path_factory.mktemp("tok")))
    docs = read_source(f"jsonl:{SFT}/chat.jsonl", fields=ExampleFields("chat")).documents[:5]
    return [encode_example(tok, d.turns) for d in docs]


def _hf_model(kind: str, folder):
    config = transformers.Qwen2Config(**HF) if kind == "qwen2" else transformers.LlamaConfig(**HF)
    return random_hf_model(config, folder)


def _stream(examples):
    tokens = np.concatenate([np.asarray(ids) for ids, _ in examples]).astype(np.uint16)
    flags = np.concatenate([np.asarray(mask, np.uint8) * TRAINED for _, mask in examples])
    flags[np.cumsum([0] + [len(ids) for ids, _ in examples[:-1]])] |= START
    return tokens, flags


def _segment_losses(model, params, rows):
    """Mean loss over the trained targets of every segment of every row (in order)."""
    inputs, targets, weights, kwargs = model_inputs({k: jnp.asarray(v, jnp.int32) for k, v in rows.items()})
    stats = jax.jit(lambda p, i, t, kw: token_stats(model, {"params": p}, i, t, **kw))
    loss_BxT, _ = stats(params, inputs, targets, kwargs)
    loss_BxT, weights = np.asarray(loss_BxT), np.asarray(weights)
    segments = rows[SEGMENTS][:, :-1] if SEGMENTS in rows else np.ones(weights.shape)
    out = []
    for b in range(len(weights)):
        for s in np.unique(segments[b][segments[b] > 0]):
            w = weights[b] * (segments[b] == s)
            out.append(float((loss_BxT[b] * w).sum() / w.sum()))
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_masked_loss_equals_transformers_with_labels_minus_100(examples, kind, tmp_path):
    hf_model = _hf_model(kind, tmp_path)
    model, params = hf_weights.import_checkpoint(tmp_path)
    theirs = []
    for ids, mask in examples:
        labels = [i if m else -100 for i, m in zip(ids, mask, strict=True)]
        with torch.no_grad():
            theirs.append(float(hf_model(torch.tensor([ids]), labels=torch.tensor([labels])).loss))
    length = max(len(ids) for ids, _ in examples)
    tokens, flags = _stream(examples)
    for packing, row_len in (("pad", length), ("segments", 2 * length)):
        rows, _ = pack_examples(tokens, flags, row_len, packing)
        np.testing.assert_allclose(_segment_losses(model, params, rows), theirs, rtol=1e-5, atol=1e-5)


def _tiny(family: str) -> ModelConfig:
    return ModelConfig(
        family=family, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, d_ff=64, vocab_size=61,
        max_seq_len=32, tie_embeddings=family == "gpt2",
    )  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_packed_logits_and_gradients_equal_unpacked(family):
    cfg = _tiny(family)
    model = Transformer(cfg)
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    lengths = [5, 9, 3, 7]
    examples = [(rng.integers(3, 61, n).tolist(), rng.integers(0, 2, n).tolist()) for n in lengths]
    tokens, flags = _stream(examples)
    packed, _ = pack_examples(tokens, flags, 25, "segments")
    assert len(packed[TOKENS]) == 1 and packed[SEGMENTS].max() == 4
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in packed.items()}
    inputs, _, _, kwargs = model_inputs(batch)
    apply = jax.jit(model.apply)
    logits = np.asarray(apply({"params": params}, inputs, **kwargs))
    alone = np.zeros((len(examples), 10), np.int32)  # right padding never reaches earlier positions
    for i, (ids, _) in enumerate(examples):
        alone[i, : len(ids)] = ids
    alone_logits = np.asarray(apply({"params": params}, jnp.asarray(alone)))
    at = 0
    for i, (ids, _) in enumerate(examples):
        n = len(ids) - 1
        np.testing.assert_allclose(logits[0, at : at + n], alone_logits[i, :n], atol=1e-5, rtol=1e-5)
        at += len(ids)
    padded, _ = pack_examples(tokens, flags, 10, "pad")

    def grads(rows):
        parts = model_inputs({k: jnp.asarray(v, jnp.int32) for k, v in rows.items()})
        inputs, targets, weights, kw = parts
        return jax.jit(jax.grad(lambda p: loss_sum(model, {"params": p}, inputs, targets, weights, **kw)))(
            params
        )

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), grads(packed), grads(padded)
    )
    assert MASK in padded and SEGMENTS not in padded
