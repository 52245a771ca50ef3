"""Running untrusted Python programs: :mod:`process` (one program in its own process under limits, and
many in parallel) and :mod:`judged` (a completion's tests, judged in a process the completion never runs
in: a verdict it cannot forge). Stdlib only; below evaluation and training, which both run programs."""

from codex_jax.sandbox.judged import Attempt, run_tests, run_tests_many
from codex_jax.sandbox.process import PRIVATE_UID, Limits, Outcome, Sandbox, make_sandbox, run_many

__all__ = [
    "PRIVATE_UID",
    "Limits",
    "Outcome",
    "Sandbox",
    "Attempt",
    "make_sandbox",
    "run_many",
    "run_tests",
    "run_tests_many",
]
