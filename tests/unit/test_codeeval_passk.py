"""The unbiased pass@k estimator against its closed form, 1 - C(n-c, k) / C(n, k), on hand-made counts."""

from math import comb

import pytest

from codex_jax.codeeval.passk import estimate_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    "n,c,k",
    [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (10, 3, 5), (10, 0, 10), (20, 19, 2), (200, 13, 100)],
)
def test_estimator_equals_the_closed_form(n, c, k):
    assert estimate_pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_hand_made_values():
    assert estimate_pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert estimate_pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert estimate_pass_at_k(4, 3, 2) == 1.0  # n - c < k: every pair holds a pass
    assert estimate_pass_at_k(3, 0, 3) == 0.0


def test_pass_at_k_averages_problems_and_reports_only_k_every_problem_has():
    passed = {"a": [True, False, False, False], "b": [True, True, False, False], "c": [False] * 4}
    got = pass_at_k(passed, [1, 2, 8])
    assert got == pytest.approx({"pass@1": (0.25 + 0.5 + 0) / 3, "pass@2": (0.5 + 5 / 6 + 0) / 3})
    assert pass_at_k({}, [1]) == {}


@pytest.mark.parametrize("n,c,k", [(3, 4, 1), (3, 1, 0), (3, 1, 4), (2, -1, 1)])
def test_impossible_counts_are_refused(n, c, k):
    with pytest.raises(ValueError):
        estimate_pass_at_k(n, c, k)
