"""Which checkpoints a run keeps (newest, every n-th, best-k by an eval metric), eval.step='best',
and the params-only export that --mode=eval and --mode=generate accept as a workdir."""

import json

import pytest
from conftest import read_metrics, run_cli


def kept_steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """12 steps, a checkpoint each; keep the newest 2, every 5th and the 2 worst by eval loss."""
    wd = tmp_path_factory.mktemp("retention") / "run"
    run_cli(
        wd,
        "--config.train.steps=12",
        "--config.checkpoint.every_steps=1",
        "--config.checkpoint.max_to_keep=2",
        "--config.checkpoint.keep_every=5",
        "--config.checkpoint.best_k=2",
        "--config.checkpoint.best_mode=max",
        "--config.train.eval_every=100",
    )
    return wd


def test_newest_every_nth_and_best_k_are_kept(run):
    evals = read_metrics(run, "eval")
    assert set(evals) == set(range(13))  # best-k: every checkpoint step is evaluated
    worst = sorted(range(1, 13), key=lambda s: evals[s]["loss"])[-2:]
    assert kept_steps(run) == sorted({11, 12} | {5, 10} | set(worst))
    for step in kept_steps(run):
        saved = json.loads((run / "checkpoints" / str(step) / "metrics" / "metrics").read_text())
        assert saved["loss"] == pytest.approx(evals[step]["loss"])


@pytest.mark.parametrize("mode", ["max", "min"])
def test_eval_step_best_restores_the_best_kept_checkpoint(run, mode):
    evals = read_metrics(run, "eval")
    pick = max if mode == "max" else min
    best = pick(kept_steps(run), key=lambda s: evals[s]["loss"])
    ev = run_cli(run, "--config.eval.step=best", f"--config.checkpoint.best_mode={mode}", mode="eval")
    line = json.loads(ev.stdout.splitlines()[-1])
    assert line["step"] == best and line["loss"] == pytest.approx(evals[best]["loss"], rel=1e-5)


def test_eval_step_is_validated(run):
    bad = run_cli(run, "--config.eval.step=newest", mode="eval", check=False)
    assert bad.returncode == 2
    assert "error: config key 'eval.step': must be 'latest', 'best' or a step number" in bad.stderr


def test_params_export_is_a_workdir_for_eval_and_generate(run, tmp_path):
    out = tmp_path / "export"
    result = run_cli(run, f"--config.export.dir={out}", mode="export")
    assert str(out) in result.stdout
    step_dir = out / "checkpoints" / "12"
    assert {p.name for p in step_dir.iterdir() if p.is_dir()} == {
        "params",
        "meta",
    }  # no optimizer state
    assert (out / "config.json").is_file() and (out / "tokenizer" / "spm.model").is_file()

    ev = run_cli(out, mode="eval")
    line = json.loads(ev.stdout.splitlines()[-1])
    assert line["step"] == 12 and line["loss"] == pytest.approx(
        read_metrics(run, "eval")[12]["loss"], rel=1e-5
    )
    sample = [json.loads(r) for r in (run / "metrics.ndjson").read_text().splitlines() if '"sample"' in r]
    gen = run_cli(out, mode="generate")
    assert gen.stdout.rstrip("\n") == sample[-1]["text"].rstrip("\n")  # same params, keys, seed: same tokens

    again = run_cli(run, f"--config.export.dir={out}", mode="export", check=False)
    assert again.returncode == 2 and "export.dir" in again.stderr
    no_metrics = run_cli(out, "--config.eval.step=best", mode="eval", check=False)
    assert no_metrics.returncode == 2 and "has eval metrics" in no_metrics.stderr
