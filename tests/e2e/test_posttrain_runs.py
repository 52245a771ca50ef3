"""DPO and GRPO through the real CLI (``train.objective``): the same training loop as next-token runs, so
the same Orbax checkpoints, resume and SIGTERM behaviour. A full DPO fine-tune stopped and resumed equals
the uninterrupted run bit for bit (its reference cached once); a LoRA DPO run starts from it, on one device
and on 8 FSDP-sharded ones; a GRPO run stopped by SIGTERM resumes to the uninterrupted run's bits; bad
inputs are one error line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
from conftest import CONFIGS, ForkedRun, read_metrics, restore_params, run_cli, xla_flags

COMMON = [
    "--config.model.num_layers=1",  # what these runs check holds for any depth; a layer less compiles sooner
    "--config.train.steps=4",
    "--config.train.warmup_steps=1",
    "--config.train.log_every=1",
    "--config.train.eval_every=2",
    "--config.checkpoint.every_steps=2",
    "--config.generate.max_new_tokens=0",
]
OPS = [("add", "+", "-"), ("sub", "-", "+"), ("mul", "*", "/"), ("div", "/", "*")]
EXIT_STOPPED = 75


def _pairs(path, names: str, count: int, bad: bool = False):
    lines = []
    for i in range(count):
        name, good, wrong = OPS[i % len(OPS)]
        prompt = f"def {name}_{names}{i}(a, b):\n    return"
        lines.append(
            json.dumps({"prompt": prompt, "chosen": f" a {good} b\n", "rejected": f" a {wrong} b\n"})
        )
    if bad:
        lines += ["not json", json.dumps({"prompt": "x", "chosen": "y"})]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return _pairs(root / "train.jsonl", "t", 16, bad=True), _pairs(root / "held.jsonl", "h", 6)


def _dpo(pairs, *extra):
    train, held = pairs
    return [*COMMON, "--config.train.objective=dpo", f"--config.train.dpo.data={train}",
            f"--config.train.dpo.eval_data={held}", *extra]  # fmt: skip


def _scalars(metrics: dict) -> dict:
    """A step's metrics without the timings (which differ from run to run)."""
    drop = ("second", "time", "wait", "per_second", "mfu")
    return {k: v for k, v in metrics.items() if not any(d in k for d in drop)}


@pytest.fixture(scope="module")
def dpo_full(pairs, tmp_path_factory):
    """A full DPO fine-tune of 4 steps, uninterrupted (the LoRA runs start from it)."""
    wd = tmp_path_factory.mktemp("dpo") / "full"
    result = run_cli(wd, *_dpo(pairs))
    assert "records of train.dpo.data skipped" in result.stderr  # the two bad lines, not a crash
    return wd


def test_dpo_full_finetune_resumes_bit_exactly_with_its_reference_cached_once(pairs, dpo_full, tmp_path):
    part = tmp_path / "part"
    run_cli(part, *_dpo(pairs, "--config.train.stop_after=2"))
    cached = (part / "dpo_reference.safetensors").read_bytes()
    resumed = run_cli(part, *_dpo(pairs))
    assert "reference log-probs" not in resumed.stderr and "resumed from" in resumed.stderr
    assert (part / "dpo_reference.safetensors").read_bytes() == cached  # reused, not recomputed
    a, b = read_metrics(dpo_full), read_metrics(part)
    assert [_scalars(a[s]) for s in (3, 4)] == [_scalars(b[s]) for s in (3, 4)]
    for x, y in zip(*(map(np.asarray, _leaves(restore_params(w, 4))) for w in (dpo_full, part)), strict=True):
        np.testing.assert_array_equal(x, y)
    evals = read_metrics(dpo_full, "eval")
    assert evals[0]["dpo/rewards/margins"] == 0.0 and evals[0]["dpo/loss"] == pytest.approx(np.log(2))
    assert {"rewards/accuracies", "rewards/margins", "logps/chosen"} <= set(a[1])
    assert "perplexity" in evals[4]  # the held-out text loss of data.source, beside the pairs'


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_dpo_lora_from_a_run_on_one_device_and_on_eight_fsdp_devices(pairs, dpo_full, tmp_path):
    """DPO over an NF4 base (QLoRA): the reference is the quantized base with the adapters off."""
    lora = _dpo(pairs, f"--config.model.init_from=workdir:{dpo_full}", "--config.lora.rank=4",
                "--config.lora.base_dtype=nf4", "--config.train.learning_rate=0.01")  # fmt: skip
    run_cli(tmp_path / "one", *lora)
    fsdp = [
        "--config.parallel.mesh.data=1",
        "--config.parallel.mesh.fsdp=8",
        "--config.parallel.fsdp_min_size=1",
    ]
    run_cli(tmp_path / "eight", *lora, *fsdp, devices=8)
    one, eight = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "eight")
    assert not (tmp_path / "one" / "dpo_reference.safetensors").exists()  # the base is the reference
    assert one[1]["rewards/margins"] == 0.0  # adapters start at zero: the policy is the base
    for step in range(1, 5):
        assert one[step]["loss"] == pytest.approx(eight[step]["loss"], abs=1e-4)
    held = read_metrics(tmp_path / "one", "eval")
    assert held[4]["dpo/rewards/margins"] > held[0]["dpo/rewards/margins"]


PROBLEMS = [  # a completion cut at its first printable character: prompts ending in '#' pass, the others fail
    ("t/one", "def one():\n    return 1\n#", "def check(c):\n    assert c() == 1\n", "one"),
    ("t/two", "def two():\n    return 2 +", "def check(c):\n    assert c() == 2\n", "two"),
    ("t/three", "def three():\n    return 3\n#", "def check(c):\n    assert c() == 3\n", "three"),
    ("t/four", "def four():\n    return 4 *", "def check(c):\n    assert c() == 4\n", "four"),
]


def _grpo(tmp_path):
    problems = tmp_path / "problems.jsonl"
    fields = ("task_id", "prompt", "test", "entry_point")
    problems.write_text("".join(json.dumps(dict(zip(fields, p, strict=True))) + "\n" for p in PROBLEMS))
    stop = json.dumps([chr(c) for c in range(33, 127)])  # random bytes stop early or late: lengths differ
    return [*COMMON, "--config.train.objective=grpo", f"--config.train.grpo.problems={problems}",
            "--config.train.grpo.max_new_tokens=8", "--config.train.grpo.iterations=2",
            "--config.train.grpo.length_penalty=0.5", f"--config.train.grpo.stop={stop}",
            "--config.train.learning_rate=0.05", "--config.logging.writers=ndjson",
            f"--config.train.grpo.eval_problems={problems}",
            "--config.train.grpo.eval_samples=2"]  # fmt: skip


def test_grpo_stopped_by_sigterm_resumes_to_the_uninterrupted_runs_bits(tmp_path):
    args = _grpo(tmp_path)
    straight, part = tmp_path / "straight", tmp_path / "part"
    run_cli(straight, *args)
    argv = ["-m", "codex_jax.main", f"--config={CONFIGS / 'tiny.py'}", f"--workdir={part}", *args]
    env = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
    run = ForkedRun(argv, env, str(tmp_path / "out.log"), str(tmp_path / "err.log"))
    deadline = time.monotonic() + 300
    while (
        not (part / "metrics.ndjson").is_file()
        or '"split": "train"' not in (part / "metrics.ndjson").read_text()
    ):
        assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "err.log").read_text()[-3000:]
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)  # during step 2 at the latest: it finishes, saves and stops
    assert run.wait(timeout=300) == EXIT_STOPPED, (tmp_path / "err.log").read_text()[-3000:]
    stopped = int((tmp_path / "err.log").read_text().split("stopped by SIGTERM after step ")[1].split(":")[0])
    assert stopped < 4 and (part / "checkpoints" / str(stopped)).is_dir()
    run_cli(part, *args)
    a, b = read_metrics(straight), read_metrics(part)
    assert [_scalars(a[s]) for s in range(1, 5)] == [_scalars(b[s]) for s in range(1, 5)]
    for x, y in zip(*(map(np.asarray, _leaves(restore_params(w, 4))) for w in (straight, part)), strict=True):
        np.testing.assert_array_equal(x, y)
    assert {"reward", "reward_std", "pass_rate", "kl", "clip_ratio", "completion_length"} <= set(a[4])
    assert {"seconds_sampling", "seconds_execution"} <= set(a[4])
    assert 0.0 < np.mean([a[s]["pass_rate"] for s in range(1, 5)]) < 1.0
    assert a[1]["kl"] == 0.0 < a[4]["kl"]  # the first update is at the reference; then it moves
    evals, resumed_evals = read_metrics(straight, "eval"), read_metrics(part, "eval")
    assert 0.0 < evals[0]["grpo/pass@1"] <= evals[0]["grpo/pass@2"] <= 1.0  # half the problems can pass
    assert evals[4]["grpo/pass@1"] == resumed_evals[4]["grpo/pass@1"]


def test_bad_post_training_inputs_are_one_error_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    cases = [
        (["--config.train.objective=ppo"], "config key 'train.objective': must be one of lm, dpo, grpo"),
        (["--config.train.objective=dpo"], "config key 'train.dpo.data': train.objective='dpo' needs"),
        (["--config.train.objective=grpo"], "config key 'train.grpo.problems': train.objective='grpo' needs"),
        (
            [
                "--config.train.objective=grpo",
                f"--config.train.grpo.problems={bad}",
                "--config.train.grad_accum_steps=2",
            ],
            "config key 'train.grad_accum_steps': must be 1 with train.objective='grpo'",
        ),
        (["--config.train.objective=dpo", f"--config.train.dpo.data={bad}"], f"no usable pair in {bad}"),
        (
            ["--config.train.objective=grpo", f"--config.train.grpo.problems={tmp_path / 'none.jsonl'}"],
            "config key 'train.grpo.problems': no such file",
        ),
        (
            ["--config.train.objective=grpo", f"--config.train.grpo.problems={bad}"],
            "config key 'train.grpo.problems': no valid problem",
        ),
    ]
    for overrides, message in cases:
        result = run_cli(tmp_path / "wd", *overrides, check=False)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and message in errors[0], (
            overrides,
            result.stderr[-2000:],
        )


def test_grpo_on_two_processes_matches_one_process(tmp_path):
    """Two processes (2 devices each) sample the same rows, process 0 judges them for both, each trains on
    its share: the same run as one process on 4 devices. Held out: greedy pass@1 (eval_temperature 0),
    with the demo's sandbox keys (programs without site, remembered verdicts). LoRA over an NF4 base
    (QLoRA), its reference the quantized base with the adapters off."""
    from test_multihost import _run_two_processes

    args = [*_grpo(tmp_path), "--config.lora.rank=4", "--config.lora.base_dtype=nf4",
            "--config.train.steps=2", "--config.train.eval_every=2",
            "--config.train.grpo.eval_temperature=0", "--config.train.grpo.remember_verdicts=True",
            "--config.codeeval.site_packages=False"]  # fmt: skip
    run_cli(tmp_path / "one", *args, devices=4)
    _run_two_processes(tmp_path / "two", *args)
    a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for step in (1, 2):
        for key in ("loss", "reward", "pass_rate", "kl", "completion_length"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)
    evals = [read_metrics(w, "eval")[2] for w in (tmp_path / "one", tmp_path / "two")]
    assert evals[0]["grpo/pass@1"] == evals[1]["grpo/pass@1"]
    assert "grpo/pass@2" not in evals[0]  # greedy: one completion a problem
