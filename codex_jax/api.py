"""The Python API behind the command line, for notebooks and scripts.

    from codex_jax import api

    cfg = api.load_config("configs/base.py", {"train.steps": 200})
    api.train(cfg, "runs/base")                 # the same run as `codex-jax train --config=...`
    api.evaluate(cfg, "runs/base")              # {'step', 'loss', 'perplexity', ...}
    api.generate(cfg, "runs/base", ["def fib(n):"])
    cfg = api.workdir_config("runs/base")       # the config a workdir was trained with

Each call validates the config first (one :class:`~codex_jax.errors.UserError` naming the bad key).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from codex_jax.config.packaged import resolve
from codex_jax.config.schema import SCHEMA, default_config, flatten
from codex_jax.errors import UserError


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config of ``spec`` (``'configs/base.py'``, ``'base'``, ``'configs/lora.py:hf:DIR'``, or any
    file ``PATH[:ARG]``) with ``overrides`` (``{'train.steps': 100}``) applied, as ``--config.KEY=V`` does."""
    path, _, arg = resolve(spec).partition(":")
    if not Path(path).is_file():
        raise UserError(f"config {spec!r}: no such file (packaged configs: codex-jax configs)")
    module_spec = importlib.util.spec_from_file_location(f"codex_jax_config_{Path(path).stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return _with_overrides(module.get_config(arg) if arg else module.get_config(), overrides)


def workdir_config(
    workdir: str | Path, overrides: Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """The config a run in ``workdir`` was started with (its ``config.json``), with ``overrides``."""
    file = Path(workdir) / "config.json"
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{file}: cannot read the run's config ({e})") from None
    cfg = default_config()
    for key, value in flatten(saved).items():
        if key in SCHEMA:  # keys a newer version dropped are ignored; new keys keep their defaults
            _set(cfg, key, value)
    return _with_overrides(cfg, overrides)


def _set(cfg: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """``cfg[key] = value`` for a dotted key, as a UserError naming the key when it cannot be."""
    *parents, leaf = key.split(".")
    node = cfg
    try:
        for name in parents:
            node = node[name]
        node[leaf] = value
    except (KeyError, AttributeError):
        raise UserError(f"config key '{key}': unknown key (see the config reference in README.md)") from None
    except TypeError as e:
        raise UserError(f"config key '{key}': {e}") from None


def _with_overrides(
    cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any] | None
) -> ml_collections.ConfigDict:
    cfg.lock()  # an override of a key the config lacks is an error, not a new key
    for key, value in (overrides or {}).items():
        _set(cfg, key, value)
    return cfg


def prepare(cfg: ml_collections.ConfigDict) -> None:
    """Joins a multi-host run when ``dist.*`` says so, then validates ``cfg`` for this device count."""
    import jax

    from codex_jax import distributed
    from codex_jax.config.validation import validate

    distributed.initialize(cfg.dist)
    num_devices = jax.local_device_count() if cfg.parallel.mode == "pmap" else jax.device_count()
    validate(cfg, num_devices=num_devices, num_processes=jax.process_count())


def train(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Trains (or resumes) to ``train.steps`` in ``workdir``; returns the final held-out metrics."""
    from codex_jax.train.loop import train as train_loop

    prepare(cfg)
    return train_loop(cfg, Path(workdir))


def evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Held-out metrics of ``workdir``'s checkpoint ``eval.step`` (``eval.metrics``)."""
    from codex_jax.restore import evaluate_workdir

    prepare(cfg)
    return evaluate_workdir(cfg, Path(workdir))


def generate(
    cfg: ml_collections.ConfigDict, workdir: str | Path, prompts: list[str] | None = None
) -> list[str]:
    """Each prompt (default: ``generate.prompt``) with its completion by ``workdir``'s checkpoint
    ``eval.step`` (sampling as ``generate.*`` says)."""
    from codex_jax.restore import generate_from_workdir

    prepare(cfg)
    return generate_from_workdir(cfg, Path(workdir), prompts)


def export(cfg: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """Writes ``workdir``'s checkpoint in ``export.format`` to ``export.dir``; returns that folder."""
    from codex_jax.export import export as export_checkpoint

    prepare(cfg)
    return export_checkpoint(cfg, Path(workdir))
