"""``codex-jax plugins [--json]``: what loaded from each plugin group and why any plugin failed.

It reads the model and metric registries (which check their own plugins), so it sits at the
command-line level above them; :mod:`codex_jax.plugins` stays the generic loader.
"""

from __future__ import annotations

import json
import sys

from codex_jax import plugins
from codex_jax.metrics import registry as metrics
from codex_jax.models import registry as models
from codex_jax.train import hooks


def report() -> dict[str, dict[str, dict[str, str]]]:
    """``{group: {'loaded': {name: 'module:attr (dist version)'}, 'failed': {name: why}}}``."""
    groups = {
        plugins.MODELS: models.plugins_group(),
        plugins.METRICS: metrics.plugins_group(),
        plugins.TOKENIZERS: plugins.load(plugins.TOKENIZERS, plugins.callable_plugin),
        plugins.DATA_SOURCES: plugins.load(plugins.DATA_SOURCES, plugins.callable_plugin),
        plugins.HOOKS: plugins.load(plugins.HOOKS, hooks.check_hook),
        plugins.REWARDS: plugins.load(plugins.REWARDS, plugins.callable_plugin),
    }
    return {
        group: {"loaded": dict(found.origin), "failed": dict(found.failed)} for group, found in groups.items()
    }


def main(argv: list[str]) -> int:
    """Prints the report (``--json``: as one JSON object); a failed plugin is a warning on stderr."""
    found = report()
    if "--json" in argv:
        print(json.dumps(found, indent=2))
        return 0
    for group, result in found.items():
        print(f"{group}:")
        if not result["loaded"] and not result["failed"]:
            print("  (no plugins)")
        for name, origin in sorted(result["loaded"].items()):
            print(f"  ok      {name}  {origin}".rstrip())
        for name, why in sorted(result["failed"].items()):
            print(f"  FAILED  {name}  {why}")
    failed = sum(len(r["failed"]) for r in found.values())
    if failed:
        print(f"{failed} plugin(s) failed to load; the built-ins work without them", file=sys.stderr)
    return 0
