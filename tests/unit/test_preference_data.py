"""Preference pairs from JSONL and Parquet (text or chat messages), bad records skipped and counted, and a
few DPO steps on them (reference log-probs cached once) that separate held-out pairs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from codex_jax.compute.preference import DPO, completion_logps, dpo_objective
from codex_jax.data.preference import PairBatches, pair_eval_batches, read_pairs
from codex_jax.errors import UserError
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params


class ByteTokenizer:
    """One token per UTF-8 byte; id 0 is EOS."""

    vocab_size, eos_id, bos_id = 256, 0, -1

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(int(i) for i in ids if i).decode("utf-8", "replace")


def _write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_pairs_from_text_and_chat_records_and_bad_ones_skipped(tmp_path):
    records = [
        {"prompt": "def f(x):\n", "chosen": "    return x\n", "rejected": "    return -x\n"},
        {
            "prompt": [{"role": "user", "content": "add"}],
            "chosen": [{"role": "assistant", "content": "a + b"}],
            "rejected": [{"role": "assistant", "content": "a - b"}],
        },
        {"prompt": "p", "rejected": "r"},  # no chosen
        "{broken",
        {"prompt": "x" * 100, "chosen": "y", "rejected": "z"},  # longer than the rows
    ]
    pairs = read_pairs(str(_write_jsonl(tmp_path / "pairs.jsonl", records)), ByteTokenizer(), seq_len=48)
    assert len(pairs) == 2 and len(pairs.skipped) == 3
    assert "pairs.jsonl:3: missing or empty field(s) chosen" in pairs.skipped[0]
    assert ":4: " in pairs.skipped[1] and "more than data.seq_len + 1 = 49" in pairs.skipped[2]
    chosen, weights = pairs.arrays["chosen"][0], pairs.arrays["chosen_weights"][0]
    text = "def f(x):\n    return x\n"
    assert chosen.shape == (49,) and weights.shape == (48,)
    assert ByteTokenizer().decode(chosen) == text
    trained = [int(chosen[t + 1]) for t in np.flatnonzero(weights)]
    assert trained == list(b"    return x\n") + [0]  # the completion and its EOS
    assert pairs.arrays["rejected_weights"][1].sum() > 0  # the chat side trains the assistant turn

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([records[0], records[0]]), tmp_path / "pairs.parquet")
    parquet = read_pairs(str(tmp_path / "pairs.parquet"), ByteTokenizer(), seq_len=48)
    np.testing.assert_array_equal(parquet.arrays["chosen"][1], chosen)

    with pytest.raises(UserError, match="no usable pair"):
        read_pairs(str(_write_jsonl(tmp_path / "bad.jsonl", records[2:])), ByteTokenizer(), seq_len=48)
    with pytest.raises(UserError, match="no such file"):
        read_pairs(str(tmp_path / "missing.jsonl"), ByteTokenizer(), seq_len=48)


def _records(numbers):
    """Chosen: a correct ``add``; rejected: a wrong one."""
    return [
        {
            "prompt": f"def add{n}(a, b):\n",
            "chosen": "    return a + b\n",
            "rejected": f"    return a - b * {n}\n",
        }
        for n in numbers
    ]


def test_dpo_steps_separate_held_out_pairs(tmp_path):
    tok = ByteTokenizer()
    train = read_pairs(str(_write_jsonl(tmp_path / "t.jsonl", _records(range(8)))), tok, seq_len=40)
    held = read_pairs(str(_write_jsonl(tmp_path / "h.jsonl", _records(range(10, 16)))), tok, seq_len=40)
    cfg = ModelConfig(
        family="gpt2",
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        d_model=32,
        d_ff=64,
        vocab_size=256,
        max_seq_len=64,
    )
    model = Transformer(cfg)
    params = init_params(cfg, jax.random.key(0))

    def with_reference(pairs, p):  # the starting weights' log-probs, computed once
        arrays = {k: jnp.asarray(v) for k, v in pairs.arrays.items()}
        for side in ("chosen", "rejected"):
            arrays[f"ref_{side}"] = completion_logps(
                model, {"params": p}, arrays[side], arrays[f"{side}_weights"]
            )[0]
        return arrays

    train_batch, held_batch = with_reference(train, params), with_reference(held, params)
    dpo = DPO("sigmoid", beta=0.1)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: dpo_objective(p, None, train_batch, model=model, dpo=dpo), has_aux=True
        )(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    _, first = dpo_objective(params, None, held_batch, model=model, dpo=dpo)
    assert float(first["rewards/margins"]) == 0.0  # the policy is the reference
    for _ in range(30):
        params, opt_state, _ = step(params, opt_state)
    _, after = dpo_objective(params, None, held_batch, model=model, dpo=dpo)
    assert float(after["rewards/accuracies"]) >= 0.9 and float(after["rewards/margins"]) > 0


def test_pair_batches_resume_from_their_state_and_split_over_processes(tmp_path):
    """The pairs of each micro-batch are a function of (seed, position): a restored iterator continues
    the same sequence, each epoch visits every pair once, and processes take disjoint shares."""
    tok = ByteTokenizer()
    pairs = read_pairs(str(_write_jsonl(tmp_path / "t.jsonl", _records(range(6)))), tok, seq_len=40)
    arrays = {**pairs.arrays, "index": np.arange(len(pairs))}
    straight = PairBatches(arrays, batch_size=4, seed=1)
    seen = [next(straight)["index"].tolist() for _ in range(6)]
    assert sorted(sum(seen[:3], [])) == sorted(list(range(6)) * 2)  # two epochs in 12 rows
    resumed = PairBatches(arrays, batch_size=4, seed=1)
    resumed.set_state({"position": 3})
    assert [next(resumed)["index"].tolist() for _ in range(3)] == seen[3:]
    shares = [PairBatches(arrays, 4, 1, process_index=i, process_count=2) for i in range(2)]
    assert sum((next(s)["index"].tolist() for s in shares), []) == seen[0]
    reference = {"ref_chosen": np.arange(6.0), "ref_rejected": -np.arange(6.0)}
    straight.set_reference(reference)
    batch = next(straight)
    np.testing.assert_array_equal(batch["ref_chosen"], batch["index"].astype(float))
    held = pair_eval_batches(arrays, batch_size=4)
    assert [b["index"].tolist() for b in held] == [[0, 1, 2, 3], [4, 5, 0, 1]]
