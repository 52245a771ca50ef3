"""A seeded family of small HumanEval-format problems for post-training demos: one-line functions of ``x``
described in words (``Return x plus 7.``), each a (operation, constant) pair. The train and held-out
problems are disjoint pairs: every held-out operation and every held-out constant also occurs in training,
but never together, so a model that passes a held-out problem has learnt to read the docstring, not
remembered the answer.

``write_family(out, seed)`` writes ``train.jsonl`` and ``heldout.jsonl`` (problems ``read_problems`` and
``eval-code`` read) and ``sft.jsonl`` (``prompt``/``completion`` records of the train problems'
reference solutions, for ``data.format='prompt_completion'``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from codex_jax.codeeval.problems import Problem
from codex_jax.files import write_text_atomic

ENTRY = "f"
INPUTS = (-50, -7, -2, 0, 1, 3, 10, 25, 37, 1000)


@dataclasses.dataclass(frozen=True)
class Operation:
    """One kind of problem: its wording, its solution's expression and its value (``{k}``: the constant)."""

    name: str
    words: str
    code: str
    value: Callable[[int, int], int]


OPERATIONS = (
    Operation("add", "x plus {k}", "x + {k}", lambda x, k: x + k),
    Operation("sub", "x minus {k}", "x - {k}", lambda x, k: x - k),
    Operation("rsub", "{k} minus x", "{k} - x", lambda x, k: k - x),
    Operation("mul", "x times {k}", "x * {k}", lambda x, k: x * k),
    Operation("mod", "x modulo {k}", "x % {k}", lambda x, k: x % k),
    Operation("floordiv", "x divided by {k}, rounded down", "x // {k}", lambda x, k: x // k),
    Operation("max", "the larger of x and {k}", "max(x, {k})", lambda x, k: max(x, k)),
    Operation("min", "the smaller of x and {k}", "min(x, {k})", lambda x, k: min(x, k)),
)
CONSTANTS = tuple(range(2, 32))


def problem(op: Operation, k: int) -> Problem:
    """The problem ``op`` with constant ``k``: a docstring in words, tests on :data:`INPUTS` with the
    expected values written out, and the reference solution."""
    prompt = f'def {ENTRY}(x):\n    """Return {op.words.format(k=k)}."""\n'
    asserts = "".join(f"    assert candidate({x}) == {op.value(x, k)}\n" for x in INPUTS)
    return Problem(
        task_id=f"synthetic/{op.name}/{k}",
        prompt=prompt,
        test=f"def check(candidate):\n{asserts}",
        entry_point=ENTRY,
        canonical_solution=f"    return {op.code.format(k=k)}\n",
    )


def family(seed: int = 0, heldout: int = 40) -> tuple[list[Problem], list[Problem]]:
    """``(train, held-out)``: every (operation, constant) pair once, ``heldout`` of them (a seeded choice,
    at most a fifth of each operation's and half of each
    constant's) held out; both lists in a seeded order."""
    pairs = [(op, k) for op in OPERATIONS for k in CONSTANTS]
    order = np.random.default_rng(seed).permutation(len(pairs))
    held, train = [], []
    per_op = {op.name: 0 for op in OPERATIONS}
    per_k = {k: 0 for k in CONSTANTS}
    for index in order:
        op, k = pairs[int(index)]
        if len(held) < heldout and per_op[op.name] < len(CONSTANTS) // 5 and per_k[k] < len(OPERATIONS) // 2:
            held.append(problem(op, k))
            per_op[op.name] += 1
            per_k[k] += 1
        else:
            train.append(problem(op, k))
    return train, held


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write_family(out: Path, seed: int = 0, heldout: int = 40) -> dict[str, Path]:
    """Writes ``train.jsonl``, ``heldout.jsonl`` (HumanEval format, with ``canonical_solution``) and
    ``sft.jsonl`` (the train problems' prompt and reference completion) into ``out``; returns the paths."""
    train, held = family(seed, heldout)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.jsonl" for name in ("train", "heldout", "sft")}
    write_text_atomic(paths["train"], _jsonl([dataclasses.asdict(p) for p in train]))
    write_text_atomic(paths["heldout"], _jsonl([dataclasses.asdict(p) for p in held]))
    sft = [{"prompt": p.prompt, "completion": p.canonical_solution} for p in train]
    write_text_atomic(paths["sft"], _jsonl(sft))
    return paths
