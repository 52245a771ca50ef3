"""The train step's batches, read and put on the devices one jitted call ahead.

The loop takes a batch (``next``), dispatches the step, then calls :meth:`DeviceFeed.fill`: while the
devices run that step, the host reads, stacks and transfers the next call's batch. So the only time the
devices wait for input is when the host is slower than a step, and a step that blocks (a logged step
fetching its metrics) finds its successor's batch already there.

The feed is the run's checkpointable iterator: its state is the source's state *before* the batch held
ahead, i.e. the batches the steps consumed, so a checkpoint taken between steps resumes to the same bits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grain

from codex_jax.compute.batch import stack


class DeviceFeed(grain.DatasetIterator):
    """Device batches of ``per_call`` micro-batches (stacked when more than one) from ``source``."""

    def __init__(self, source: grain.DatasetIterator, put_batch: Callable[[Any], Any], per_call: int):
        super().__init__()
        self.source, self._put, self._per_call = source, put_batch, per_call
        self._ahead: tuple[Any, Any] | None = None  # (the source's state before it, the device batch)

    def fill(self) -> None:
        """Reads and puts the next call's batch now, unless one is already held."""
        if self._ahead is None:
            before = self.source.get_state()
            local = [next(self.source) for _ in range(self._per_call)]
            self._ahead = (before, self._put(local[0] if self._per_call == 1 else stack(local)))

    def __next__(self):
        self.fill()
        assert self._ahead is not None
        (_, batch), self._ahead = self._ahead, None
        return batch

    def get_state(self) -> dict:
        """The source's state as of the batches taken so far (not the one held ahead)."""
        return self._ahead[0] if self._ahead is not None else self.source.get_state()

    def set_state(self, state: dict) -> None:
        """Continues from ``state`` (a batch held ahead is dropped)."""
        self._ahead = None
        self.source.set_state(state)

    def close(self) -> None:
        """Stops the source's readers."""
        self._ahead = None
        if hasattr(self.source, "close"):
            self.source.close()
