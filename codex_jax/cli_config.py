"""``codex-jax config print|validate|diff``: a config as a run would resolve it, its check, and the
difference between two runs' configs. Nothing here trains, loads data or creates a workdir.

``print`` and ``validate`` parse ``--config=FILE --config.KEY=V`` exactly as a run does (the same
one-line errors, exit 2). ``validate`` then runs a run's checks before any work (the config
validation and the ``train.hooks`` look-up) for one device and one process: the rules on the device
count (``data.batch_size`` divisible by the devices) are checked when the run starts.
``diff`` compares the ``config.json`` of two workdirs and exits like ``diff``: 0 when they are the
same, 1 when they differ, 2 on an error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from codex_jax import main as main_lib
from codex_jax.config.paths import missing_paths
from codex_jax.config.runspec import RUN_CONFIG, saved_config
from codex_jax.config.schema import SCHEMA, flatten
from codex_jax.config.validation import validate
from codex_jax.errors import EXIT_USER_ERROR, UserError
from codex_jax.train import hooks

USAGE = """usage:
  codex-jax config print --config=FILE|--workdir=RUN [--config.KEY=V ...] [--changed]
      every key of the resolved config; '*' marks the keys that differ from the defaults
      (--changed: only those); --workdir=RUN alone: the run's saved config
  codex-jax config validate --config=FILE|--workdir=RUN [--config.KEY=V ...]
      'ok', or the one-line error a run would stop with (exit 2); also checks that the local paths
      (data.source, data.tokenizer, the hf: folder, ...) exist and are readable
  codex-jax config diff RUN_A RUN_B
      the keys whose values differ between two workdirs' config.json (exit 1; 0: the same)"""

EXIT_DIFFERENT = 1
_ABSENT = "(absent)"


def main(argv: list[str]) -> int:
    """``codex-jax config ACTION ...``; returns the exit code (a parse error exits 2 itself)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    action, args = argv[0], argv[1:]
    actions = {"print": print_config, "validate": validate_config, "diff": diff_configs}
    if action not in actions:
        return _error(f"codex-jax config: unknown action {action!r} (print, validate or diff)")
    try:
        return actions[action](args)
    except UserError as e:
        return _error(str(e))


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _load(args: list[str], action: str):
    """The config of ``--config=... --config.KEY=V`` as a run parses it (other arguments: an error)."""
    cfg, leftover = main_lib.parse_config_flags([f"codex-jax config {action}", *args])
    if leftover:
        raise UserError(f"codex-jax config {action}: unexpected arguments {' '.join(leftover)}")
    return cfg


def print_config(args: list[str]) -> int:
    """Prints every key as ``KEY = VALUE`` (schema order), ``*`` and the default where it differs."""
    changed_only = "--changed" in args
    flat = flatten(_load([a for a in args if a != "--changed"], "print"))
    keys = [k for k in SCHEMA if k in flat] + sorted(set(flat) - set(SCHEMA))
    changed = [k for k in keys if k not in SCHEMA or flat[k] != SCHEMA[k][0]]
    for key in keys:
        if key not in SCHEMA:
            print(f"* {key} = {flat[key]!r}  # not a schema key")
        elif key in changed:
            print(f"* {key} = {flat[key]!r}  # default {SCHEMA[key][0]!r}")
        elif not changed_only:
            print(f"  {key} = {flat[key]!r}")
    print(f"{len(changed)} of {len(keys)} keys differ from the defaults (marked *)")
    return 0


def validate_config(args: list[str]) -> int:
    """Prints ``ok`` when a run of this config would get past its checks; else the run's error (2)."""
    cfg = _load(args, "validate")
    validate(cfg)
    hooks.user_hooks(cfg.train.hooks)
    missing = missing_paths(cfg)
    if missing:
        raise UserError("; ".join(missing))
    print(f"ok: {main_lib.saved_run_dir() or main_lib.config_filename()}")
    return 0


def diff_configs(args: list[str]) -> int:
    """Prints ``KEY: A -> B`` for each key whose value differs between two runs' ``config.json``."""
    if len(args) != 2 or any(a.startswith("-") for a in args):
        raise UserError("codex-jax config diff: expected two workdirs (codex-jax config diff RUN_A RUN_B)")
    a, b = (_run_config(Path(arg)) for arg in args)
    keys = [k for k in SCHEMA if k in a or k in b] + sorted((set(a) | set(b)) - set(SCHEMA))
    different = [k for k in keys if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
    if not different:
        print(f"same config ({len(keys)} keys)")
        return 0
    print(f"--- {Path(args[0]) / RUN_CONFIG}\n+++ {Path(args[1]) / RUN_CONFIG}")
    for key in different:
        print(f"{key}: {_show(a, key)} -> {_show(b, key)}")
    print(f"{len(different)} of {len(keys)} keys differ")
    return EXIT_DIFFERENT


def _run_config(run: Path) -> dict[str, Any]:
    if not run.is_dir():
        raise UserError(f"{run}: no such workdir")
    if not (run / RUN_CONFIG).is_file():
        raise UserError(f"{run}: has no {RUN_CONFIG} (not a run's workdir)")
    saved = saved_config(run)
    if not isinstance(saved, dict):
        raise UserError(f"{run / RUN_CONFIG}: not a config (a JSON object expected)")
    return flatten(saved)


def _show(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else _ABSENT
