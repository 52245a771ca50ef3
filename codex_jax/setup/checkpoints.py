"""The one place a run's :class:`~codex_jax.checkpoint.Checkpointer` is built."""

from __future__ import annotations

from pathlib import Path

from codex_jax.checkpoint import Checkpointer, Retention


def open_checkpoints(
    run: Path,
    *,
    lora: bool = False,
    retention: Retention | None = None,
    read_only: bool = True,
    async_save: bool = False,
) -> Checkpointer:
    """The checkpoints of the run in ``run`` (``run/checkpoints``): read-only unless ``read_only=False``
    (saves in the background with ``async_save``). ``lora``: the trained tree is a LoRA run's adapter
    tree (item 'lora'); ``retention``: the steps kept and how 'best' ranks them (default: newest 3)."""
    return Checkpointer(
        run / "checkpoints",
        retention=retention,
        async_save=async_save,
        read_only=read_only,
        params_item="lora" if lora else "params",
    )
