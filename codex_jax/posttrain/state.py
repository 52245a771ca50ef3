"""What a post-training run saves and how its steps pick their data: both functions of the step alone, so
that a resumed run is the uninterrupted one bit for bit.

The state (trained params and optimizer state, as one flat list of arrays) is ``<name>_state.safetensors``
with ``<name>_state.json`` (its step), each written atomically, the JSON last.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load, save

from codex_jax.files import write_bytes_atomic, write_text_atomic


def step_indices(count: int, per_step: int, seed: int, step: int) -> list[int]:
    """The data indices of ``step`` (1-based): a slice of an endless sequence of seeded permutations of
    ``range(count)``, one per epoch."""
    first = (step - 1) * per_step
    out = []
    for position in range(first, first + per_step):
        epoch, index = divmod(position, count)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(count)[index]))
    return out


def save_state(workdir: Path, name: str, step: int, params, opt_state) -> None:
    """Saves ``(params, opt_state)`` as of ``step``."""
    leaves = jax.tree.leaves((params, opt_state))
    arrays = {f"{i:06d}": np.asarray(x) for i, x in enumerate(leaves)}
    write_bytes_atomic(workdir / f"{name}_state.safetensors", save(arrays))
    write_text_atomic(workdir / f"{name}_state.json", json.dumps({"step": step, "leaves": len(leaves)}))


def restore_state(workdir: Path, name: str, params, opt_state):
    """``(step, params, opt_state)`` saved in ``workdir``, or step 0 and the given ones (their structure is
    the saved one's)."""
    meta_path = workdir / f"{name}_state.json"
    if not meta_path.is_file():
        return 0, params, opt_state
    meta = json.loads(meta_path.read_text())
    arrays = load((workdir / f"{name}_state.safetensors").read_bytes())
    leaves = [jax.numpy.asarray(arrays[f"{i:06d}"]) for i in range(meta["leaves"])]
    restored = jax.tree.unflatten(jax.tree.structure((params, opt_state)), leaves)
    return int(meta["step"]), *restored
