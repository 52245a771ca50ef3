"""A DPO run: steps over preference pairs, its state saved in the workdir and resumed bit for bit.

The pairs of step s are a slice of seeded per-epoch permutations (:func:`~codex_jax.posttrain.state.
step_indices`). The reference of a full fine-tune is the starting weights' log-probs of every pair, computed
once and cached in ``dpo_reference.safetensors`` (keyed by the sha256 of the pairs and of those weights: a
resumed run reuses it, other pairs or weights recompute it); a LoRA run's reference is its base with the
adapters off (nothing cached). Metrics per step (TRL's names) go to ``metrics.ndjson`` (split ``dpo``);
SIGTERM or SIGINT stops after the current step with it saved.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from safetensors.numpy import load, save

from codex_jax.compute.preference import DPO, completion_logps, dpo_objective
from codex_jax.data.preference import SIDES, Pairs
from codex_jax.files import write_bytes_atomic
from codex_jax.metrics.ndjson import NdjsonWriter
from codex_jax.posttrain.state import restore_state, save_state, step_indices
from codex_jax.train.stop import Stopped, StopSignals

NAME, REFERENCE, METRICS = "dpo", "dpo_reference.safetensors", "metrics.ndjson"
DEFAULT_DPO = DPO()


def _checksum(*trees) -> str:
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(trees):
        a = np.asarray(leaf)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def reference_logps(model, params, pairs: Pairs, workdir: Path, batch_size: int = 16) -> dict:
    """``{'ref_chosen': [N], 'ref_rejected': [N]}`` of the starting ``params``, from the workdir's cache or
    computed (``batch_size`` pairs at a time) and cached."""
    key = _checksum(pairs.arrays, params)
    path = workdir / REFERENCE
    if path.is_file():
        cached = load(path.read_bytes())
        if bytes(cached["key"]).decode() == key:
            return {k: v for k, v in cached.items() if k != "key"}
    logps = jax.jit(lambda p, tokens, weights: completion_logps(model, {"params": p}, tokens, weights)[0])
    out = {}
    for side in SIDES:
        tokens, weights = pairs.arrays[side], pairs.arrays[f"{side}_weights"]
        parts = [
            np.asarray(logps(params, tokens[i : i + batch_size], weights[i : i + batch_size]))
            for i in range(0, len(tokens), batch_size)
        ]
        out[f"ref_{side}"] = np.concatenate(parts).astype(np.float32)
    write_bytes_atomic(path, save({**out, "key": np.frombuffer(key.encode(), np.uint8)}))
    print(f"dpo: reference log-probs of {len(pairs)} pairs cached in {path}", file=sys.stderr)
    return out


def train_dpo(
    model,
    params,
    pairs: Pairs,
    tx: optax.GradientTransformation,
    workdir: Path,
    *,
    steps: int,
    batch_size: int,
    dpo: DPO = DEFAULT_DPO,
    seed: int = 0,
    frozen=None,
    stop_after: int = 0,
) -> list[dict]:
    """Trains ``params`` (a LoRA run: the adapters, ``frozen`` the base) on ``pairs`` to ``steps``, resuming
    from ``workdir``; returns the metrics of the steps run now (``stop_after``: stop there)."""
    workdir.mkdir(parents=True, exist_ok=True)
    arrays = dict(pairs.arrays)
    if frozen is None:
        arrays |= reference_logps(model, params, pairs, workdir)
    start, policy, opt_state = restore_state(workdir, NAME, params, tx.init(params))

    @jax.jit
    def update(params, opt_state, batch):
        def objective(p):
            return dpo_objective(p, frozen, batch, model=model, dpo=dpo)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}

    last = min(steps, stop_after or steps)
    history: list[dict] = []
    writer = NdjsonWriter(workdir / METRICS)
    with StopSignals() as signals:
        for step in range(start + 1, last + 1):
            rows = np.array(step_indices(len(pairs), batch_size, seed, step))
            batch = {k: jnp.asarray(v[rows]) for k, v in arrays.items()}
            policy, opt_state, metrics = update(policy, opt_state, batch)
            save_state(workdir, NAME, step, policy, opt_state)
            scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
            writer.write_scalars(step, {f"dpo/{k}": v for k, v in scalars.items()})
            history.append({"step": step, **scalars})
            if signals.requested(step):
                writer.close()
                raise Stopped(
                    f"stopped by {signals.name} after step {step}, saved in {workdir}: rerun to resume", step
                )
    writer.close()
    return history
