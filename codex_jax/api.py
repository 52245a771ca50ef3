"""The Python API behind the command line, for notebooks and scripts.

    from codex_jax import api

    cfg = api.load_config("configs/base.py", {"train.steps": 200})
    api.train(cfg, "runs/base")                 # the same run as `codex-jax train --config=...`
    api.train(cfg, "runs/base", hooks=[MyHook()])  # + code on step end, eval end, checkpoint save
    api.evaluate(cfg, "runs/base")              # {'step', 'loss', 'perplexity', ...}
    api.generate(cfg, "runs/base", ["def fib(n):"])
    api.eval_code(cfg, "runs/base")            # pass@k on codeeval.problems, run in a sandbox
    cfg = api.workdir_config("runs/base")       # the config a workdir was trained with

Each call validates the config first (one :class:`~codex_jax.errors.UserError` naming the bad key).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

from codex_jax import distributed, restore, runtime
from codex_jax import export as export_lib
from codex_jax.codeeval import run as code_eval
from codex_jax.config.packaged import resolve
from codex_jax.config.paths import resolve_paths
from codex_jax.config.runspec import RUN_CONFIG, run_config, set_key
from codex_jax.config.validation import validate
from codex_jax.errors import UserError
from codex_jax.files import as_path, is_remote
from codex_jax.train import loop
from codex_jax.train.hooks import Hook  # noqa: F401 - api.Hook: the base class of a user's hooks


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config of ``spec`` (``'configs/base.py'``, ``'base'``, ``'configs/lora.py:hf:DIR'``, or any
    file ``PATH[:ARG]``; a run's ``RUN/config.json``: :func:`workdir_config`) with ``overrides``
    (``{'train.steps': 100}``) applied, as ``--config.KEY=V`` does."""
    if Path(spec).name == RUN_CONFIG and Path(spec).is_file():
        return workdir_config(Path(spec).parent, overrides)
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
    return _with_overrides(run_config(as_path(workdir)), overrides)


def _with_overrides(
    cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any] | None
) -> ml_collections.ConfigDict:
    cfg.lock()  # an override of a key the config lacks is an error, not a new key
    for key, value in (overrides or {}).items():
        set_key(cfg, key, value)
    return cfg


def prepare(cfg: ml_collections.ConfigDict) -> None:
    """Makes ``cfg``'s local paths absolute (in place: config.json, the manifests and exports then work from
    any directory), joins a multi-host run when ``dist.*`` says so, then validates ``cfg`` for this device
    count; turns on the persistent compilation cache (``runtime.compilation_cache``)."""
    resolve_paths(cfg)
    runtime.use_compilation_cache(cfg.runtime.compilation_cache)
    distributed.initialize(cfg.dist)
    num_devices = jax.local_device_count() if cfg.parallel.mode == "pmap" else jax.device_count()
    validate(cfg, num_devices=num_devices, num_processes=jax.process_count())


def train(cfg: ml_collections.ConfigDict, workdir: str | Path, hooks: Sequence[Any] = ()) -> dict[str, float]:
    """Trains (or resumes) to ``train.steps`` in ``workdir``; returns the final held-out metrics.

    ``hooks``: objects with any of ``on_step_end``, ``on_eval_end``, ``on_checkpoint_save`` (each
    ``(step, metrics)``; subclass :class:`Hook`), run after the ``train.hooks`` entry points; one
    that raises stops the run with a UserError naming it, once the saves in flight are committed.
    Holds ``workdir``'s lock (another run there: UserError). SIGTERM or SIGINT (the main thread's) stop
    it after the current step with that step saved: :class:`codex_jax.train.stop.Stopped`.
    A run that fails before it saved any checkpoint removes ``workdir`` when it created it (a local one),
    unless it holds token cache work the next run continues from (a ``cache/build-*`` folder: a build that
    stopped, e.g. on a full disk, resumes from the tasks it finished)."""
    prepare(cfg)
    path = as_path(workdir)
    created = not is_remote(path) and not path.exists() and jax.process_count() == 1
    try:
        return loop.train(cfg, path, hooks)
    except BaseException:
        saved = any((path / "checkpoints").glob("[0-9]*")) or any((path / "cache").glob("build-*"))
        if created and path.is_dir() and not saved:
            shutil.rmtree(path, ignore_errors=True)
        raise


def evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Held-out metrics of ``workdir``'s checkpoint ``eval.step`` (``eval.metrics``)."""
    prepare(cfg)
    return restore.evaluate_workdir(cfg, as_path(workdir))


def generate(
    cfg: ml_collections.ConfigDict, workdir: str | Path, prompts: list[str] | None = None
) -> list[str]:
    """Each prompt (default: ``generate.prompt``) with its completion by ``workdir``'s checkpoint
    ``eval.step`` (sampling as ``generate.*`` says)."""
    prepare(cfg)
    return restore.generate_from_workdir(cfg, as_path(workdir), prompts)


def eval_code(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Functional correctness of ``workdir``'s checkpoint ``eval.step`` on ``codeeval.problems``:
    completions run against each problem's tests in a sandbox; writes ``samples.jsonl`` and
    ``results.json`` to ``WORKDIR/codeeval/<step>/`` and returns the summary (``pass@k``, counts)."""
    prepare(cfg)
    return code_eval.eval_code(cfg, as_path(workdir))


def export(cfg: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """Writes ``workdir``'s checkpoint in ``export.format`` to ``export.dir``; returns that folder."""
    prepare(cfg)
    return export_lib.export(cfg, as_path(workdir))
