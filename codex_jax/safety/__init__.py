"""Safety policies: find secrets in code and block, redact or allow them.

Used on training records (``data.safety_policy``: redacted or dropped, counted in
``data_manifest.json``), on generated text (``generate.safety_policy``) and by
``codex-jax safety scan PATH...``. See :mod:`codex_jax.safety.policy` for the policy format.
"""

from codex_jax.safety.policy import (
    DEFAULT_POLICY,
    Finding,
    Policy,
    Result,
    Rule,
    filter_output,
    load_policy,
)

__all__ = ["DEFAULT_POLICY", "Finding", "Policy", "Result", "Rule", "filter_output", "load_policy"]
