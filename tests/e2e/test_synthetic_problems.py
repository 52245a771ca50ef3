"""The GRPO demo's problem family (codex_jax.codeeval.synthetic): seeded, split so that held-out problems are
new (operation, constant) pairs, written as files eval-code reads, and judged right in the sandbox: each
reference solution passes its tests, a wrong constant, a wrong operation or the operation's typical bug (what
the noisy SFT records hold) fails. A sandbox that remembers
verdicts judges each distinct program once."""

from __future__ import annotations

import json

from codex_jax.codeeval.problems import read_problems
from codex_jax.codeeval.synthetic import (
    CONSTANTS,
    CORRECT_RATES,
    OPERATIONS,
    bug,
    family,
    problem,
    sft_records,
    write_family,
)
from codex_jax.sandbox import Attempt, Limits, make_sandbox, run_tests_many


def _pair(p):
    _, op, k = p.task_id.split("/")
    return op, int(k)


def test_the_family_is_seeded_and_held_out_pairs_are_new():
    train, held = family(seed=0)
    again_train, again_held = family(seed=0)
    assert train == again_train and held == again_held
    assert {p.task_id for p in family(seed=1)[1]} != {p.task_id for p in held}
    assert len(held) == 40 and len(train) + len(held) == len(OPERATIONS) * len(CONSTANTS)
    train_pairs, held_pairs = {_pair(p) for p in train}, {_pair(p) for p in held}
    assert not train_pairs & held_pairs
    # every held-out operation and constant is also trained, only never together
    assert {op for op, _ in held_pairs} <= {op for op, _ in train_pairs}
    assert {k for _, k in held_pairs} <= {k for _, k in train_pairs}
    assert held[0].prompt.startswith('def f(x):\n    """Return ') and held[0].entry_point == "f"


def test_written_files_read_back_as_problems_and_sft_records(tmp_path):
    paths = write_family(tmp_path, seed=3, heldout=10)
    train, held = family(seed=3, heldout=10)
    for name, expected in (("train", train), ("heldout", held)):
        problem_set = read_problems(str(paths[name]))
        assert problem_set.skipped == [] and problem_set.problems == expected
    records = [json.loads(line) for line in paths["sft"].read_text().splitlines()]
    assert records == sft_records(train, seed=3)
    clean = sft_records(train, noisy=False, per_problem=1)
    expected = [{"prompt": p.prompt, "completion": p.canonical_solution} for p in train]
    assert sorted(clean, key=str) == sorted(expected, key=str)
    # noisy: four completions a problem, the reference or its bug, the reference at one of two rates
    by_prompt = {p.prompt: p for p in train}
    rates: dict[str, list[bool]] = {}
    for record in records:
        p = by_prompt[record["prompt"]]
        assert record["completion"] in (p.canonical_solution, bug(p))
        rates.setdefault(_pair(p)[0], []).append(record["completion"] == p.canonical_solution)
    assert len(records) == 4 * len(train)
    fractions = {op: sum(r) / len(r) for op, r in rates.items()}
    assert sorted(fractions.values()) == [CORRECT_RATES[0]] * 4 + [CORRECT_RATES[1]] * 4, fractions


def test_reference_solutions_pass_and_wrong_ones_fail_in_the_sandbox():
    by_name = {op.name: op for op in OPERATIONS}
    cases = [problem(op, 7 + i) for i, op in enumerate(OPERATIONS)]
    good = [Attempt(p.prompt, p.canonical_solution, p.test, p.entry_point) for p in cases]
    wrong = []
    for p in cases:
        op, k = _pair(p)
        other_k = problem(by_name[op], k + 1).canonical_solution  # right operation, wrong constant
        other_op = next(o for o in OPERATIONS if o.name != op)
        wrong += [
            Attempt(p.prompt, c, p.test, p.entry_point)
            for c in (other_k, problem(other_op, k).canonical_solution)
        ]
    # stdlib-only problems: the programs start without site (-S), as the demo runs them
    sandbox = make_sandbox(Limits(timeout_s=10.0, site_packages=False), remember_verdicts=True)
    assert sandbox.info()["site_packages"] is False and sandbox.info()["remember_verdicts"] is True
    outcomes = run_tests_many(sandbox, good + wrong + good[:2], workers=2)
    assert [o.passed for o in outcomes[: len(good)]] == [True] * len(good), [o.result for o in outcomes]
    assert not any(o.passed for o in outcomes[len(good) : len(good) + len(wrong)])
    # the repeated programs were judged once: their outcomes are the remembered ones
    assert len(sandbox.verdicts) == len(good) + len(wrong)
    assert outcomes[-2] is outcomes[0] and outcomes[-1] is outcomes[1]
    again = run_tests_many(sandbox, wrong[:3], workers=2)
    assert [o is w for o, w in zip(again, outcomes[len(good) : len(good) + 3], strict=True)] == [True] * 3


def test_a_timed_out_program_is_judged_again_not_remembered():
    p = problem(OPERATIONS[0], 3)
    slow = Attempt(p.prompt, "    while True:\n        pass\n", p.test, p.entry_point)
    sandbox = make_sandbox(Limits(timeout_s=1.0), remember_verdicts=True)
    first, second = run_tests_many(sandbox, [slow], workers=1) + run_tests_many(sandbox, [slow], workers=1)
    assert first.timed_out and second.timed_out and first is not second
    assert sandbox.verdicts == {}
