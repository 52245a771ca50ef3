"""A seeded family of small HumanEval-format problems for post-training demos: one-line functions of ``x``
described in words (``Return x plus 7.``), each a (operation, constant) pair. The train and held-out
problems are disjoint pairs: every held-out operation and every held-out constant also occurs in training,
but never together, so a model that passes a held-out problem has learnt to read the docstring, not
remembered the answer.

``write_family(out, seed)`` writes ``train.jsonl`` and ``heldout.jsonl`` (problems ``read_problems`` and
``eval-code`` read) and ``sft.jsonl`` (``prompt``/``completion`` records of the train problems, for
``data.format='prompt_completion'``). The SFT records are noisy on purpose (``noisy=True``), as if written
by a careless teacher: each train problem has four completions, its reference solution or its operation's
typical bug (``x / k`` for floor division, ``min`` for ``max``, ...), the reference in a
:data:`CORRECT_RATES` fraction of them (half the operations, a seeded choice, get the low one). A model
fitted to them learns the mixture, so greedy decoding writes the bug for those operations, while sampling
still writes the reference now and then: what rewards from running the tests can reinforce.
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
    bug: str  # a typical wrong solution's expression


OPERATIONS = (
    Operation("add", "x plus {k}", "x + {k}", lambda x, k: x + k, "x - {k}"),
    Operation("sub", "x minus {k}", "x - {k}", lambda x, k: x - k, "{k} - x"),
    Operation("rsub", "{k} minus x", "{k} - x", lambda x, k: k - x, "x - {k}"),
    Operation("mul", "x times {k}", "x * {k}", lambda x, k: x * k, "x ** {k}"),
    Operation("mod", "x modulo {k}", "x % {k}", lambda x, k: x % k, "{k} % x"),
    Operation("floordiv", "x divided by {k}, rounded down", "x // {k}", lambda x, k: x // k, "x / {k}"),
    Operation("max", "the larger of x and {k}", "max(x, {k})", lambda x, k: max(x, k), "min(x, {k})"),
    Operation("min", "the smaller of x and {k}", "min(x, {k})", lambda x, k: min(x, k), "max(x, {k})"),
)
CONSTANTS = tuple(range(2, 32))
CORRECT_RATES = (0.25, 0.75)  # how often a noisy SFT record is the reference: half the operations each


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
    held: list[Problem] = []
    train: list[Problem] = []
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


def bug(problem_: Problem) -> str:
    """The typical wrong completion of one of the family's problems."""
    _, name, k = problem_.task_id.split("/")
    return f"    return {next(op for op in OPERATIONS if op.name == name).bug.format(k=k)}\n"


def sft_records(train: list[Problem], seed: int = 0, noisy: bool = True, per_problem: int = 4) -> list[dict]:
    """``{prompt, completion}`` records, ``per_problem`` of each train problem (in a seeded order): its
    reference solution, or (``noisy``) for all but a :data:`CORRECT_RATES` fraction of them its operation's
    bug (half the operations, a seeded choice, get the low rate)."""
    rng = np.random.default_rng([seed, 1])
    low = set(rng.permutation([op.name for op in OPERATIONS])[: len(OPERATIONS) // 2].tolist())
    records = []
    for p in train:
        rate = CORRECT_RATES[0] if p.task_id.split("/")[1] in low else CORRECT_RATES[1]
        right = per_problem if not noisy else round(rate * per_problem)
        records += [
            {"prompt": p.prompt, "completion": p.canonical_solution if i < right else bug(p)}
            for i in range(per_problem)
        ]
    return [records[int(i)] for i in rng.permutation(len(records))]


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write_family(out: Path, seed: int = 0, heldout: int = 40, noisy: bool = True) -> dict[str, Path]:
    """Writes ``train.jsonl``, ``heldout.jsonl`` (HumanEval format, with ``canonical_solution``) and
    ``sft.jsonl`` (:func:`sft_records` of the train problems) into ``out``; returns the paths."""
    train, held = family(seed, heldout)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.jsonl" for name in ("train", "heldout", "sft")}
    write_text_atomic(paths["train"], _jsonl([dataclasses.asdict(p) for p in train]))
    write_text_atomic(paths["heldout"], _jsonl([dataclasses.asdict(p) for p in held]))
    write_text_atomic(paths["sft"], _jsonl(sft_records(train, seed, noisy)))
    return paths
