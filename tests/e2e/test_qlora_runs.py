"""QLoRA through the CLI, for real: a LoRA fine-tune over an NF4 base that learns, resumes bit-exactly and
exports (PEFT adapters over the full-precision base; a merged HF model), and its config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import LLAMA_TINY, read_metrics, run_cli
from test_lora import LORA, TOKENS, _peft_logits

QLORA = [
    *[o for o in LORA if "base_dtype" not in o],
    "--config.lora.base_dtype=nf4",
    "--config.lora.quantize_embeddings=True",  # the embedding and head in NF4 too
]


def test_cli_qlora_learns_resumes_and_exports(base_run, base_run_hf, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    common = [*LLAMA_TINY, f"--config.model.init_from=workdir:{base_run}", *QLORA]
    full, part = tmp_path / "full", tmp_path / "part"
    run_cli(full, *common)
    run_cli(part, *common, "--config.train.stop_after=6")
    run_cli(part, *common)
    a, b = read_metrics(full), read_metrics(part)
    assert [a[s]["loss"] for s in range(7, 13)] == [b[s]["loss"] for s in range(7, 13)]
    evals, base_eval = read_metrics(full, "eval"), read_metrics(base_run, "eval")
    assert abs(evals[0]["loss"] - base_eval[20]["loss"]) < 0.1  # step 0: the NF4 base alone
    assert evals[12]["loss"] < evals[0]["loss"] - 0.01  # the fine-tune learns
    step = full / "checkpoints" / "12"
    assert (step / "lora").is_dir() and not (step / "params").exists()
    meta = json.loads((step / "meta" / "metadata").read_text())["lora"]["base"]
    assert meta["dtype"] == "nf4" and meta["quant_block_size"] == 64 and meta["quantize_embeddings"]

    # a quantized run resumed with a full-precision base: refused before anything runs
    result = run_cli(
        part,
        *common,
        "--config.lora.base_dtype=bfloat16",
        "--config.lora.quantize_embeddings=False",
        "--config.train.steps=14",
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lora.base_dtype='nf4'" in errors[0], result.stderr[-2000:]

    # export: PEFT adapters over the full-precision base, and the merged model, agree in transformers
    outs = {"base_hf": base_run_hf, **{k: tmp_path / k for k in ("peft", "merged_hf")}}
    for fmt, out in (("peft", outs["peft"]), ("hf", outs["merged_hf"])):
        run_cli(full, *common, f"--config.export.format={fmt}", f"--config.export.dir={out}", mode="export")
    merged = transformers.AutoModelForCausalLM.from_pretrained(outs["merged_hf"]).eval()
    with torch.no_grad():
        expected = merged(torch.tensor(np.asarray(TOKENS, np.int64))).logits.numpy()
    np.testing.assert_allclose(_peft_logits(outs["base_hf"], outs["peft"]), expected, atol=1e-4)


@pytest.mark.parametrize(
    "override,message",
    [
        (["--config.lora.base_dtype=int4"], "lora.base_dtype"),
        (["--config.lora.quant_block_size=48"], "48 does not divide a kernel's 64 input rows"),
        (
            ["--config.lora.base_dtype=bfloat16", "--config.lora.quantize_embeddings=True"],
            "config key 'lora.quantize_embeddings': needs lora.base_dtype 'int8' or 'nf4'",
        ),
    ],
)
def test_qlora_config_errors(tmp_path, override, message):
    result = run_cli(
        tmp_path, *LLAMA_TINY, "--config.lora.rank=4", "--config.lora.base_dtype=nf4", *override, check=False
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def test_eval_and_generate_with_int8_weights(base_run):
    """eval.quantize=int8: held-out loss within 0.01 of the float32 checkpoint's; generate runs on it."""
    plain = run_cli(base_run, *LLAMA_TINY, mode="eval")
    int8 = run_cli(base_run, *LLAMA_TINY, "--config.eval.quantize=int8", mode="eval")
    assert "int8 weight-only" in int8.stderr
    loss = [json.loads(r.stdout.strip().splitlines()[-1])["loss"] for r in (plain, int8)]
    assert loss[0] != loss[1] and abs(loss[0] - loss[1]) < 0.01, loss
    out = run_cli(
        base_run,
        *LLAMA_TINY,
        "--config.eval.quantize=int8",
        "--config.generate.max_new_tokens=8",
        mode="generate",
    )
    assert out.returncode == 0 and out.stdout.strip()
