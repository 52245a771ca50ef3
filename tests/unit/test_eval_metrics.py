"""Evaluation metrics: registry, jitted accumulation vs numpy, line metrics, --mode=eval."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codex_jax.errors import UserError
from codex_jax.evaluate import EvalContext, evaluate_metrics, line_tables
from codex_jax.metrics import line_completion as lc
from codex_jax.metrics import registry
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params

CODE = '''import os


def add(a, b):
    """Adds."""
    return a + b


class Box:
    def size(self):
        return 3

    async def fetch(self, url):
        data = await get(url)
        return data
'''


class ByteTokenizer:
    """One token per UTF-8 byte; id 0 is EOS (code has no NUL bytes)."""

    vocab_size, eos_id, bos_id = 256, 0, -1

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(int(i) for i in ids if i).decode("utf-8", "replace")


CFG = ModelConfig(
    family="gpt2",
    num_layers=1,
    num_heads=2,
    num_kv_heads=2,
    d_model=32,
    d_ff=64,
    vocab_size=256,
    max_seq_len=128,
)


@pytest.fixture(scope="module")
def ctx_parts():
    model = Transformer(CFG)
    shapes = jax.eval_shape(lambda: init_params(CFG, jax.random.key(0)))
    rng = np.random.default_rng(0)  # numpy draws: compiling jax's RNG on CPU costs seconds
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype), shapes)
    ids = np.array(list((CODE + "\0").encode()) * 12, np.int32)
    windows = ids[: len(ids) // 65 * 65].reshape(-1, 65)
    return model, params, windows


def make_ctx(ctx_parts, **kwargs):
    model, params, windows = ctx_parts
    batches = [windows[i * 4 : (i + 1) * 4] for i in range(2)]
    return EvalContext(
        model,
        params,
        ByteTokenizer(),
        windows,
        batches,
        global_batch_size=4,
        num_batches=2,
        **kwargs,
    )


def reference(model, params, batches):
    """Per-token loss, argmax hits and targets with plain numpy."""
    losses, hits, targets = [], [], []
    for b in batches:
        logits = np.asarray(model.apply({"params": params}, jnp.asarray(b[:, :-1])), np.float64)
        logp = (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )
        t = b[:, 1:]
        losses.append(-np.take_along_axis(logp, t[..., None], -1)[..., 0])
        hits.append(logits.argmax(-1) == t)
        targets.append(t)
    return np.concatenate(losses), np.concatenate(hits), np.concatenate(targets)


def line_match_reference(hits, targets, tok):
    """Complete lines (between two line ends inside a row) with code, all tokens hit."""
    correct = total = 0
    for row_hits, row_targets in zip(hits, targets, strict=True):
        ends = [i for i, t in enumerate(row_targets) if t in (0, ord("\n"))]
        for a, b in zip(ends, ends[1:], strict=False):
            text = tok.decode(row_targets[a + 1 : b + 1])
            if text.strip():
                total += 1
                correct += bool(row_hits[a + 1 : b + 1].all())
    return correct, total


def test_token_metrics_match_numpy(ctx_parts):
    ctx = make_ctx(ctx_parts)
    got = evaluate_metrics("loss,perplexity,token_accuracy,bits_per_byte,exact_match", ctx)
    loss, hits, targets = reference(ctx.model, ctx.params, ctx.batches)
    assert got["loss"] == pytest.approx(loss.mean(), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(loss.mean()), rel=1e-5)
    assert got["token_accuracy"] == pytest.approx(hits.mean())
    nbytes = sum(len(ByteTokenizer().decode(r[1:]).encode()) for b in ctx.batches for r in b)
    assert got["eval_bytes"] == nbytes
    assert got["bits_per_byte"] == pytest.approx(loss.sum() / math.log(2) / nbytes, rel=1e-5)
    correct, total = line_match_reference(hits, targets, ByteTokenizer())
    assert total > 5
    assert got["exact_match"] == pytest.approx(correct / total)


def test_line_exact_match_counts_only_complete_code_lines():
    # Row: [partial line]\n [code line]\n [blank]\n [code line, cut off]
    line_end = jnp.array([[0, 1, 0, 0, 1, 1, 0, 0]], bool)
    content = jnp.array([[1, 0, 1, 1, 0, 0, 1, 1]], bool)
    for correct, expected in (
        ([1, 1, 1, 1, 1, 1, 1, 1], 1.0),
        ([1, 1, 1, 0, 1, 1, 1, 1], 0.0),
        ([0, 0, 1, 1, 1, 0, 0, 0], 1.0),
    ):
        m = registry.LineExactMatch.from_model_output(
            correct=jnp.array([correct], jnp.float32), line_end=line_end, content=content
        )
        assert (int(m.lines), float(m.compute())) == (1, expected)


def test_line_tables_mark_newlines_eos_and_code():
    line_end, content = line_tables(ByteTokenizer(), 300)
    assert line_end[ord("\n")] and line_end[0] and not line_end[ord("a")]
    assert content[ord("a")] and not content[ord(" ")] and not content[ord("\n")]
    assert line_end.shape == (300,) and not line_end[299]


def test_line_completion_samples_and_scoring(ctx_parts):
    pairs = lc.samples_from_text(CODE, starts_mid=False, cut=False)
    assert [t for _, t in pairs] == [
        '    """Adds."""',
        "        return 3",
        "        data = await get(url)",
    ]
    assert pairs[0][0].endswith("def add(a, b):\n")
    assert lc.samples_from_text("x = 1\ndef f(): pass\n", False, False) == []
    ctx = make_ctx(ctx_parts, line_completion_samples=3)
    samples = lc.find_samples(ctx.tokenizer, ctx.eval_windows, 3)
    assert len(samples) == 3

    def oracle(prompts, max_new):  # continues every prompt with its true next line
        by_prompt = {
            tuple(ctx.tokenizer.encode(p)[-len(q) :]): t for (p, t), q in zip(samples, prompts, strict=True)
        }
        return [ctx.tokenizer.encode(by_prompt[tuple(q)] + "\nrest") for q in prompts]

    ctx.greedy = oracle
    assert lc.line_completion(ctx) == 1.0 and ctx.details["line_completion_samples"] == 3
    ctx.greedy = lambda prompts, n: [ctx.tokenizer.encode("    pass\n") for _ in prompts]
    assert lc.line_completion(ctx) == 0.0


def test_line_completion_runs_greedy_generation(ctx_parts):
    ctx = make_ctx(ctx_parts, line_completion_samples=2, line_completion_max_tokens=8)
    got = evaluate_metrics("line_completion", ctx)
    assert 0.0 <= got["line_completion"] <= 1.0 and got["line_completion_samples"] == 2


def test_unknown_metric_is_a_user_error(ctx_parts):
    with pytest.raises(UserError, match=r"eval\.metrics.*'nope'.*bits_per_byte"):
        evaluate_metrics("loss,nope", make_ctx(ctx_parts))
    assert registry.names()[:3] == ["loss", "perplexity", "token_accuracy"]
