"""Orbax checkpoints of a run: params, trainer state (step, optimizer, PRNG key), grain iterator, metadata.

One checkpoint step is a folder ``workdir/checkpoints/<step>/`` with one item per part, so evaluation can
restore ``params`` alone without reading the optimizer state::

    params/   the model parameters (StandardSave)
    train/    {'step', 'opt_state', 'rng'} (StandardSave)
    data/     the grain iterator state, one file per process
    meta/     JSON: the resolved config and the tokenizer checksum
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from codex_jax.errors import UserError


class Checkpointer:
    """A thin, explicit wrapper over ``ocp.CheckpointManager`` for this project's items."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            read_only=read_only,
            create=not read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, data_iterator, meta: dict[str, Any]) -> None:
        """Starts saving ``state`` at ``step`` (in the background when async)."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(
                {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
            ),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta),
        )
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state, data_iterator):
        """Restores the full train state (into ``abstract_state``'s shardings) and the iterator in place."""
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            train=ocp.args.StandardRestore(
                {"step": abstract_state.step, "opt_state": abstract_state.opt_state,
                 "rng": abstract_state.rng}
            ),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        )
        restored = self._restore(step, args)
        train = restored["train"]
        return abstract_state.replace(
            step=train["step"], params=restored["params"], opt_state=train["opt_state"], rng=train["rng"]
        )

    def restore_params(self, step: int, abstract_params):
        """Restores only the parameters (no optimizer state is read)."""
        return self._restore(step, ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))[
            "params"
        ]

    def restore_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata saved with ``step``."""
        return self._restore(step, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def _restore(self, step: int, args):
        path = self.directory / str(step)
        try:
            return self._manager.restore(step, args=args)
        except (ValueError, KeyError, FileNotFoundError, OSError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"checkpoint {path}: cannot restore ({first_line})") from e

    def wait(self) -> None:
        """Blocks until background saves finish; re-raises a failed save."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) for every array of ``tree``."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
