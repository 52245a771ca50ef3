"""Moved to :mod:`codex_jax.sandbox` (below training, which rewards programs with it); kept for imports."""

from codex_jax.sandbox import PRIVATE_UID, Limits, Outcome, Sandbox, make_sandbox, run_many, run_tests_many

__all__ = ["PRIVATE_UID", "Limits", "Outcome", "Sandbox", "make_sandbox", "run_many", "run_tests_many"]
