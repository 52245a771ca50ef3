"""lm-evaluation-harness: the loglikelihoods the harness gets through the codex_jax model equal our own
per-token sums (one unpadded sequence, log_softmax) within 1e-5; the local tasks under tests/fixtures/lm_eval
(local JSONL, nothing downloaded) complete, generate_until through the documented command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from test_codeeval_run import train_tiny  # noqa: E402

from codex_jax.codeeval.lm_eval_model import CodexJaxLM  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "fixtures" / "lm_eval"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("lm_eval"), steps=10)[1]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    for key, value in {**OFFLINE, "HF_DATASETS_CACHE": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)  # the task YAMLs name their JSONL relative to the repository root


def own_logprob(lm: CodexJaxLM, context_ids: list[int], continuation_ids: list[int]) -> float:
    """Sum of log p(continuation token | everything before it), from one unpadded forward pass."""
    ids = jnp.asarray([context_ids + continuation_ids], jnp.int32)
    logits = jax.jit(lm.model.apply)(lm.variables, ids[:, :-1])
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), np.float64)
    first = len(context_ids) - 1
    return float(sum(logp[0, first + j, t] for j, t in enumerate(continuation_ids)))


def test_harness_loglikelihoods_equal_our_own_sums(workdir, offline):
    lm = CodexJaxLM(workdir=str(workdir), batch_size=4)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["codex_jax_choice", "codex_jax_rolling"],
        task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
        log_samples=True,
    )
    checked = 0
    for sample in out["samples"]["codex_jax_choice"]:
        for args, resp in zip(sample["arguments"], sample["resps"], strict=True):
            logp, _ = resp[0]
            assert float(logp) == pytest.approx(own_logprob(lm, *lm.encode_pair(*args)), abs=1e-5)
            checked += 1
    for sample in out["samples"]["codex_jax_rolling"]:
        text = sample["arguments"][0][0]
        ids = list(lm.tokenizer.encode(text))
        assert float(sample["resps"][0][0]) == pytest.approx(own_logprob(lm, [lm.prefix_id], ids), abs=1e-5)
        checked += 1
    assert checked == 10 + 5
    assert 0.0 <= out["results"]["codex_jax_choice"]["acc,none"] <= 1.0


def test_is_greedy_and_truncation(workdir):
    lm = CodexJaxLM(workdir=str(workdir), batch_size=2)
    context, continuation = lm.encode_pair("def add(a, b):\n", "    return a + b\n")
    long_context = list(np.resize(context, lm.max_length + 40))  # longer than the model's positions
    (short, greedy), (truncated, _) = lm.score([(context, continuation), (long_context, continuation)])
    keep = (long_context + continuation)[-(lm.max_length + 1) :]
    split = len(keep) - len(continuation)
    assert truncated == pytest.approx(own_logprob(lm, keep[:split], keep[split:]), abs=1e-5)
    logp = jax.nn.log_softmax(lm.model.apply(lm.variables, jnp.asarray([context + continuation])[:, :-1]))
    argmax = np.asarray(jnp.argmax(logp[0, len(context) - 1 :], axis=-1)).tolist()
    assert greedy == (argmax == continuation)


def test_generate_until_task_completes_through_the_command_line(workdir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "codex_jax.codeeval.lm_eval_model",
        "run",
        "--model",
        "codex_jax",
        "--model_args",
        f"workdir={workdir}",
        "--tasks",
        "codex_jax_complete",
        "--include_path",
        str(TASKS),
        "--batch_size",
        "4",
        "--output_path",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    [results_file] = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]["codex_jax_complete"]
    assert 0.0 <= results["exact_match,none"] <= 1.0
