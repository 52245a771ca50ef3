"""Orbax checkpoints of a run: params, trainer state (step, optimizer, PRNG key), grain iterator,
metadata; retention (newest, every n-th, best-k) and integrity (a sha256 manifest per step).

One checkpoint step is a folder ``workdir/checkpoints/<step>/`` with one item per part, so
evaluation can restore ``params`` alone without reading the optimizer state::

    params/   the model parameters (StandardSave); a LoRA run has lora/ instead: the adapter tree
              (its frozen base is named, with a checksum, in meta's 'lora', not copied)
    train/    {'step', 'opt_state', 'rng'} (StandardSave)
    data/     the grain iterator state, one file per process
    meta/     JSON: the resolved config and the tokenizer checksum
    metrics/  JSON: the eval metrics of that step (only when best-k retention is on)
    manifest.sha256.json   size and sha256 of every file above

Orbax writes a step into ``<step>.orbax-checkpoint-tmp*`` and renames it when complete. The manifest
is written into that temporary folder just before the rename, so a step folder is complete
exactly when it has a manifest: :meth:`Checkpointer.steps` ignores temporary folders and
manifest-less ones (a deletion cut short), and :meth:`Checkpointer.select` checks the files it
will read against it.

On a bucket (``gs://``) there is no rename: Orbax writes ``<step>/`` in place and marks it complete
with ``commit_success.txt``, written after the manifest. There a step is complete when it has both.
The manifest and those integrity checks live in :mod:`codex_jax.checkpoint.integrity`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from codex_jax import files
from codex_jax.checkpoint.integrity import (
    COMMIT_FILE,
    MANIFEST,
    CorruptCheckpoint,
    check_file,
    complete,
    first_line,
    write_manifest,
)
from codex_jax.errors import UserError

__all__ = [  # the manifest names and the error come from .integrity
    "COMMIT_FILE",
    "MANIFEST",
    "PARAMS_ITEMS",
    "TRAIN_ITEMS",
    "Checkpointer",
    "CorruptCheckpoint",
    "Retention",
]
TRAIN_ITEMS = ("params", "train", "data", "meta")
PARAMS_ITEMS = ("params", "meta")


@dataclasses.dataclass(frozen=True)
class Retention:
    """Steps kept: the newest ``max_to_keep``, multiples of ``keep_every`` (0: none) and the
    ``best_k`` best by the eval metric ``best_metric`` (``best_mode`` 'min' or 'max')."""

    max_to_keep: int = 3
    keep_every: int = 0
    best_k: int = 0
    best_metric: str = "loss"
    best_mode: str = "min"

    @classmethod
    def from_config(cls, c) -> Retention:
        """From the ``checkpoint`` section of a run config."""
        return cls(c.max_to_keep, c.keep_every, c.best_k, c.best_metric, c.best_mode)

    def policy(self) -> policies.PreservationPolicy:
        keep: list[policies.PreservationPolicy] = [policies.LatestN(n=self.max_to_keep)]
        if self.keep_every:
            keep.append(policies.EveryNSteps(self.keep_every))
        if self.best_k:
            keep.append(
                policies.BestN(
                    get_metric_fn=self.score,
                    reverse=self.best_mode == "min",
                    n=self.best_k,
                    keep_checkpoints_without_metrics=False,
                )
            )
        return policies.AnyPreservationPolicy(keep)

    def score(self, metrics: dict) -> float:
        return float(metrics[self.best_metric])


class _ReadOnlyNotice(logging.Filter):
    """Drops Orbax's warning that a read-only CheckpointManager's directory is read only: every resume and
    every eval opens one on purpose, and the warning reached the user's console through absl each time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_ReadOnlyNotice())


class Checkpointer:
    """A thin, explicit wrapper over ``ocp.CheckpointManager`` for this project's items.

    Saves are asynchronous (``async_save=False`` waits for each); a failed background save is raised
    as a :class:`UserError` by the next :meth:`save`, :meth:`wait` or :meth:`close`.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        retention: Retention | None = None,
        max_to_keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
        params_item: str = "params",
    ):
        self.directory = files.absolute(directory)  # a local folder or a gs:// prefix
        self.params_item = params_item  # the item of the trained tree: 'params', or 'lora' (LoRA)
        self.retention = retention or Retention(max_to_keep=max_to_keep)
        self.async_save = async_save
        self._saving: int | None = None
        options = ocp.CheckpointManagerOptions(
            preservation_policy=self.retention.policy(),
            best_fn=self.retention.score if self.retention.best_k else None,
            best_mode=self.retention.best_mode,
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(
                post_finalization_callback=self._write_manifest,
                create_directories_asynchronously=False,  # a failure there hangs the save
            ),
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            save_interval_steps=0 if read_only else 1,  # what read_only means; Orbax warns otherwise
            create=not read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    # --- which steps exist ---------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Complete steps (a committed folder with its manifest), oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and complete(p))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint step, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def metrics(self, step: int) -> dict | None:
        """The eval metrics saved with ``step`` (best-k retention), or None."""
        path = self.path(step) / "metrics" / "metrics"
        return json.loads(path.read_text()) if path.is_file() else None

    def select(
        self,
        which: str | int = "latest",
        *,
        on_corrupt: str = "error",
        items: tuple[str, ...] | None = None,
    ) -> int | None:
        """The step to restore: ``'latest'`` (None when there is none), ``'best'`` or a number.

        Its files (of ``items``; None: all) are checked against its manifest. A corrupt one raises
        :class:`CorruptCheckpoint`, or with ``on_corrupt='previous'`` is reported on stderr and the
        next candidate (the previous step, or the next best) is tried.
        """
        if items is not None:
            items = tuple(self.params_item if i == "params" else i for i in items)
        candidates = self._candidates(which)
        for i, step in enumerate(candidates):
            try:
                self.verify(step, items)
                return step
            except CorruptCheckpoint as e:
                if on_corrupt != "previous":
                    raise
                if i == len(candidates) - 1:
                    raise CorruptCheckpoint(f"{e}; no intact checkpoint to fall back to") from e
                fallback = candidates[i + 1]
                print(
                    f"warning: {e}; checkpoint.on_corrupt='previous': trying step {fallback}",
                    file=sys.stderr,
                )
        return None

    def _candidates(self, which: str | int) -> list[int]:
        steps = self.steps()
        self._note_incomplete(steps)
        if which == "latest":
            return steps[::-1]
        if which == "best":
            scored = [(self.retention.score(m), s) for s in steps if (m := self.metrics(s)) is not None]
            if not scored:
                raise UserError(
                    f"config key 'eval.step': no checkpoint in {self.directory} has eval metrics "
                    "(they are saved when checkpoint.best_k > 0)"
                )
            return [s for _, s in sorted(scored, reverse=self.retention.best_mode == "max")]
        step = int(which)
        if step not in steps:
            why = (
                f"{self.path(step)} has no {MANIFEST} (incomplete)"
                if self.path(step).is_dir()
                else (f"no checkpoint {step} in {self.directory}")
            )
            raise UserError(f"config key 'eval.step': {why} (have {steps})")
        return [step]

    def _note_incomplete(self, steps: list[int]) -> None:
        if not self.directory.is_dir():
            return
        newest = steps[-1] if steps else -1
        for p in sorted(self.directory.iterdir()):
            if p.name.isdigit() and int(p.name) > newest and int(p.name) not in steps:
                print(f"note: ignoring {p}: no {MANIFEST} (incomplete)", file=sys.stderr)

    # --- integrity -------------------------------------------------------------------------------

    def verify(self, step: int, items: tuple[str, ...] | None = None) -> None:
        """Raises CorruptCheckpoint unless every file of ``items`` matches ``step``'s manifest."""
        path = self.path(step)
        try:
            listed = json.loads((path / MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpoint(f"checkpoint {path}: unreadable {MANIFEST} ({first_line(e)})") from e
        for item in items or ():
            if not any(name.startswith(item + "/") for name in listed):
                raise CorruptCheckpoint(f"checkpoint {path}: has no '{item}' item")
        for name, record in sorted(listed.items()):
            if items is None or name.split("/")[0] in items:
                check_file(path, name, record)

    def _write_manifest(self) -> None:
        """Orbax's post-finalization callback: the manifest of the step being saved, written into
        its temporary folder (before orbax renames it)."""
        if jax.process_index() != 0:
            return
        step = self._saving
        assert step is not None  # orbax calls this while _save's step is being saved
        pending = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"), key=files.mtime)
        write_manifest(pending[-1] if pending else self.path(step))

    # --- save ------------------------------------------------------------------------------------

    def save(
        self, step: int, state, data_iterator, meta: dict[str, Any], metrics: dict | None = None
    ) -> None:
        """Starts saving ``state`` at ``step`` (in the background when async); ``metrics`` (eval
        metrics of that step) rank it for best-k retention."""
        args = ocp.args.Composite(
            **{self.params_item: ocp.args.StandardSave(state.params)},
            train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state, "rng": state.rng}),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta),
        )
        self._save(step, args, metrics if self.retention.best_k else None)

    def save_params(self, step: int, params, meta: dict[str, Any]) -> None:
        """Saves a params-only checkpoint (``params`` and ``meta``), as ``--mode=export`` writes."""
        self._save(
            step,
            ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
        )

    def _save(self, step: int, args, metrics: dict | None = None) -> None:
        self.wait()
        self._saving = step
        try:
            self._manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as e:  # noqa: BLE001 - any failure to start a save is reported the same way
            raise UserError(f"checkpoint {self.path(step)}: cannot save ({first_line(e)})") from e
        if not self.async_save:
            self.wait()

    def wait(self) -> None:
        """Blocks until background saves finish; a failed save raises UserError."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax, tensorstore and OS errors alike
            where = self.directory if self._saving is None else self.path(self._saving)
            raise UserError(f"checkpoint {where}: saving failed ({first_line(e)})") from e

    def close(self) -> None:
        """Waits for background saves (raising a failed one), then releases orbax's threads."""
        try:
            self.wait()
        except UserError:
            with contextlib.suppress(Exception):  # the failed save is the error to report
                self._manager.close()
            raise
        try:
            self._manager.close()  # also waits for Orbax's metadata writes, which wait() does not
        except Exception as e:  # noqa: BLE001 - a save that failed late (its folder gone) is still one error
            raise UserError(f"checkpoint {self.directory}: saving failed ({first_line(e)})") from e

    def discard_after(self, step: int | None) -> None:
        """Moves step folders newer than ``step`` aside (``<step>.corrupt``): the corrupt or
        incomplete ones a resume skipped, so that the resumed run can save those steps again."""
        newest = -1 if step is None else step
        if jax.process_index() == 0 and self.directory.is_dir():  # a bucket has no empty folders
            for p in sorted(self.directory.iterdir()):
                if p.name.isdigit() and int(p.name) > newest:
                    target = p.with_name(f"{p.name}.corrupt")
                    while target.exists():
                        target = target.with_name(target.name + "_")
                    p.rename(target)
                    print(f"note: moved {p} aside to {target.name}", file=sys.stderr)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("codex_jax:discard_after")
        self._manager.reload()

    # --- restore ---------------------------------------------------------------------------------

    def restore(self, step: int, abstract_state, data_iterator):
        """The full train state (into ``abstract_state``'s shardings); the iterator in place."""
        args = ocp.args.Composite(
            **{self.params_item: ocp.args.StandardRestore(abstract_state.params)},
            train=ocp.args.StandardRestore(
                {
                    "step": abstract_state.step,
                    "opt_state": abstract_state.opt_state,
                    "rng": abstract_state.rng,
                }
            ),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        )
        restored = self._restore(step, args)
        train = restored["train"]
        return abstract_state.replace(
            step=train["step"],
            params=restored[self.params_item],
            opt_state=train["opt_state"],
            rng=train["rng"],
        )

    def restore_params(self, step: int, abstract_params):
        """Restores only the parameters (no optimizer state is read)."""
        item = self.params_item
        args = ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract_params)})
        return self._restore(step, args)[item]

    def restore_train(self, step: int, abstract_train: dict):
        """Restores only the ``train`` item, ``{'step', 'opt_state', 'rng'}`` (e.g. for the parameters' EMA
        that an optimizer state holds), into ``abstract_train``'s shapes and shardings."""
        args = ocp.args.Composite(train=ocp.args.StandardRestore(abstract_train))
        return self._restore(step, args)["train"]

    def restore_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata saved with ``step``."""
        meta = self._restore(step, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict):
            raise CorruptCheckpoint(f"checkpoint {self.path(step)}: meta is not a JSON object")
        return meta

    def _restore(self, step: int, args):
        try:
            return self._manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore errors on bad data vary widely
            raise UserError(f"checkpoint {self.path(step)}: cannot restore ({first_line(e)})") from e
