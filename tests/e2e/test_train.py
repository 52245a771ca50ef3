"""End to end on the tiny config, in real processes: training, resume, eval mode, bit-exact continuation."""

import json

import jax
import numpy as np
import pytest
from conftest import read_metrics, read_tb_events, restore_params, run_cli


def test_tiny_run_learns_checkpoints_and_evaluates(tmp_path):
    wd = tmp_path / "run"
    result = run_cli(wd)
    final = json.loads(result.stdout.strip().splitlines()[-2])
    evals = read_metrics(wd, "eval")
    assert set(evals) == {0, 10, 20}
    assert evals[20]["loss"] < evals[0]["loss"] - 0.5
    assert final["step"] == 20 and final["loss"] == pytest.approx(evals[20]["loss"])
    train = read_metrics(wd)
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_second"} <= set(train[20])
    for name in ("config.json", "data_manifest.json", "tokenizer", "tensorboard"):
        assert (wd / name).exists(), name
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [
        10,
        20,
    ]

    again = run_cli(wd)
    assert "already reached" in again.stdout

    ev = run_cli(wd, mode="eval", devices=2)
    line = json.loads(ev.stdout.strip().splitlines()[-1])
    assert set(line) == {"step", "loss", "perplexity", "token_accuracy"}
    assert line["step"] == 20 and line["loss"] == pytest.approx(evals[20]["loss"], rel=1e-5)

    ev10 = run_cli(wd, "--config.eval.step=10", mode="eval")
    assert json.loads(ev10.stdout.strip().splitlines()[-1])["loss"] == pytest.approx(
        evals[10]["loss"], rel=1e-5
    )
    missing = run_cli(wd, "--config.eval.step=7", mode="eval", check=False)
    assert missing.returncode == 2 and "no checkpoint 7" in missing.stderr


SFT = [  # prompt/completion examples packed whole into rows: segments and loss masks (issue 14)
    "--config.data.source=jsonl:tests/fixtures/sft/prompt_completion.jsonl",
    "--config.data.format=prompt_completion",
    "--config.data.packing=segments",
    "--config.data.train_on=completion",
]


# Through the CLI and its checkpoints: jit and pmap, both accumulation impls, text and SFT. A run without
# accumulation resumes the same way (jit: tests/e2e/test_faults.py and test_chaos.py kill and resume one;
# pmap: tests/unit/test_optimizers.py saves and restores one through the trainer's Checkpointer).
@pytest.mark.parametrize(
    "mode,accum,devices,impl,data",
    [
        ("jit", 4, 2, "multisteps", "text"),
        ("jit", 4, 2, "scan", "sft"),
        ("pmap", 4, 2, "multisteps", "sft"),
    ],
)
def test_resume_is_bit_exact(tmp_path, mode, accum, devices, impl, data):
    """Stopped at a checkpoint and resumed == uninterrupted, bit for bit: losses, params, TensorBoard. The SFT
    cases (segments + masks, both accumulation impls, jit and pmap) go through the checkpoint the same way."""
    common = (SFT if data == "sft" else []) + [
        f"--config.parallel.mode={mode}",
        f"--config.train.grad_accum_steps={accum}",
        f"--config.train.accum_impl={impl}",
        "--config.model.dropout=0.1",
        "--config.model.num_layers=1",  # bits through a checkpoint: one layer shows them as well as two
        "--config.train.steps=12",
        "--config.checkpoint.every_steps=6",
        "--config.train.log_every=1",
        "--config.train.eval_every=100",
    ]
    full, part = tmp_path / "full", tmp_path / "part"
    run_cli(full, *common, devices=devices)
    run_cli(part, *common, "--config.train.stop_after=6", devices=devices)
    run_cli(part, *common, devices=devices)
    a, b = read_metrics(full), read_metrics(part)
    assert [a[s]["loss"] for s in range(7, 13)] == [b[s]["loss"] for s in range(7, 13)]
    pa, pb = restore_params(full, 12), restore_params(part, 12)
    jax.tree.map(np.testing.assert_array_equal, pa, pb)
    restarts = [e.step for e in read_tb_events(part / "tensorboard") if e.HasField("session_log")]
    assert restarts == [7]  # TensorBoard drops what a stopped run logged after its checkpoint
    if impl == "scan":  # its optimizer state has no MultiSteps wrapper: resuming under MultiSteps is refused
        other = [c.replace("accum_impl=scan", "accum_impl=multisteps") for c in common]
        refused = run_cli(part, *other, "--config.train.steps=13", devices=devices, check=False)
        assert refused.returncode == 2 and "optax.MultiSteps" in refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].endswith("or use a new --workdir")
