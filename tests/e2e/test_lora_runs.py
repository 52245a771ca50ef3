"""LoRA through the CLI, for real: a fine-tune of a tiny llama that resumes bit-exactly and exports
(hf, peft, merged), its config errors, and tools/bench.py on a shrunken llama_1b."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import LLAMA_TINY, read_metrics, run_cli, xla_flags
from test_lora import LORA, TOKENS, _peft_logits


def test_cli_lora_finetune_resumes_bit_exactly_and_exports(base_run, base_run_hf, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    common = [*LLAMA_TINY, f"--config.model.init_from=workdir:{base_run}", *LORA]
    full, part = tmp_path / "full", tmp_path / "part"
    run_cli(full, *common)
    run_cli(part, *common, "--config.train.stop_after=6")
    run_cli(part, *common)
    a, b = read_metrics(full), read_metrics(part)
    assert [a[s]["loss"] for s in range(7, 13)] == [b[s]["loss"] for s in range(7, 13)]
    evals = read_metrics(full, "eval")
    base_eval = read_metrics(base_run, "eval")
    assert abs(evals[0]["loss"] - base_eval[20]["loss"]) < 2e-2  # step 0 is the (bf16) base
    assert evals[12]["loss"] < evals[0]["loss"] - 0.01  # the fine-tune learns
    # checkpoints hold the adapters, optimizer state and a reference to the base, not the base
    step = full / "checkpoints" / "12"
    assert (step / "lora").is_dir() and not (step / "params").exists()
    meta = json.loads((step / "meta" / "metadata").read_text())["lora"]
    assert meta["base"]["source"] == f"workdir:{base_run}" and meta["base"]["step"] == 20
    assert len(meta["base"]["sha256"]) == 64 and meta["trainable_params"] < meta["frozen_params"]
    import orbax.checkpoint as ocp

    ckpt = ocp.StandardCheckpointer()
    adapters = [ckpt.restore((wd / "checkpoints/12/lora").absolute()) for wd in (full, part)]
    jax.tree.map(np.testing.assert_array_equal, *adapters)

    # export: the base (hf), the adapters (peft) and the merged model (hf) agree in transformers
    outs = {"base_hf": base_run_hf, **{k: tmp_path / k for k in ("peft", "merged_hf")}}
    for fmt, out in (("peft", outs["peft"]), ("hf", outs["merged_hf"])):
        run_cli(
            full,
            *common,
            f"--config.export.format={fmt}",
            f"--config.export.dir={out}",
            mode="export",
        )
    merged = transformers.AutoModelForCausalLM.from_pretrained(outs["merged_hf"]).eval()
    with torch.no_grad():
        expected = merged(torch.tensor(np.asarray(TOKENS, np.int64))).logits.numpy()
    np.testing.assert_allclose(_peft_logits(outs["base_hf"], outs["peft"]), expected, atol=1e-4)


def test_lora_config_errors(tmp_path):
    result = run_cli(tmp_path, "--config.lora.init_from=peft:/nowhere", check=False)
    assert result.returncode == 2 and "needs lora.rank > 0" in result.stderr
    result = run_cli(tmp_path, "--config.lora.rank=4", "--config.lora.targets=nothing", check=False)
    assert result.returncode == 2 and "matches none of the kernels" in result.stderr


def test_bench_lora_runs_on_a_shrunken_llama_1b():
    import os
    import subprocess
    import sys

    from conftest import REPO

    shrink = [
        "--config.model.num_layers=2",
        "--config.model.d_model=64",
        "--config.model.num_heads=4",
        "--config.model.num_kv_heads=2",
        "--config.model.d_ff=128",
        "--config.model.vocab_size=256",
        "--config.data.seq_len=32",
        "--config.data.batch_size=2",
        "--config.model.attention_impl=xla",
        "--config.model.dtype=float32",
    ]
    env = {**os.environ, "XLA_FLAGS": xla_flags(1), "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [
            sys.executable,
            "tools/bench.py",
            "--config=configs/llama_1b.py",
            "--config.lora.rank=16",
            "--config.lora.base_dtype=bfloat16",
            *shrink,
            "--steps=2",
            "--warmup=0",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["lora_rank"] == 16 and out["base_dtype"] == "bfloat16"
    assert out["trainable_params"] == 2 * 16 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))
    assert 0 < out["trainable_fraction"] < 1 and out["tokens_per_second"] > 0
    assert out["lora_flops_per_token"] < out["flops_per_token"]
