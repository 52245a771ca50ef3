"""What the training loop does differently for each ``train.objective``: where a step's batch comes from
and what the reference is. The loop itself is the same for 'lm', 'dpo' and 'grpo'.

- ``lm``: token windows (:mod:`codex_jax.data.pipeline`), one jitted call ahead.
- ``dpo``: preference pairs (:class:`~codex_jax.data.preference.PairBatches`), one jitted call ahead. A
  full fine-tune's reference is the starting weights' log-probs of every pair, computed once and cached in
  ``dpo_reference.safetensors`` (keyed by the pairs, the model, seed and ``model.init_from``); a LoRA run's
  is its base with the adapters off. Held-out pairs (``train.dpo.eval_data``) add ``eval/dpo/*``.
  ``train.dpo.packing`` packs each training micro-batch's pairs into rows of segments (the cache holds
  one value per pair either way; held-out pairs stay unpacked).
- ``grpo``: each step's rollout from the current params (:class:`~codex_jax.posttrain.feed.Rollouts`);
  a full fine-tune's reference is the starting weights, rebuilt on every start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from safetensors.numpy import load, save

from codex_jax.compute.preference import completion_logps
from codex_jax.data.examples import chat_template_text
from codex_jax.data.feed import DeviceFeed
from codex_jax.data.preference import SIDES, PairBatches, pair_eval_batches, read_pairs
from codex_jax.files import write_bytes_atomic
from codex_jax.posttrain.feed import Rollouts
from codex_jax.setup import adapters
from codex_jax.setup.runners import fresh_state_fn
from codex_jax.setup.weights import load_params

REFERENCE = "dpo_reference.safetensors"


@dataclasses.dataclass
class Posttrain:
    """A DPO or GRPO run's own data: the pairs (train and held-out), or the rollouts."""

    pairs: PairBatches | None = None
    eval_arrays: dict | None = None
    eval_pairs: list = dataclasses.field(default_factory=list)
    rollouts: Rollouts | None = None


def _pairs(cfg, source: str, tokenizer, key: str):
    pairs = read_pairs(source, tokenizer, cfg.data.seq_len, chat_template_text(cfg.data, tokenizer))
    for why in pairs.skipped[:3]:
        print(f"dpo: skipped {why}", file=sys.stderr)
    if pairs.skipped:
        print(
            f"dpo: {len(pairs.skipped)} of {len(pairs) + len(pairs.skipped)} records of {key} skipped",
            file=sys.stderr,
        )
    return pairs


def train_feed(cfg: ml_collections.ConfigDict, data, runner, model, lm_feed) -> tuple[Any, Posttrain | None]:
    """``(the loop's train iterator, the objective's data)``: ``lm_feed()`` for 'lm'."""
    objective = cfg.train.objective
    if objective == "lm":
        return lm_feed(), None
    if objective == "grpo":
        rollouts = Rollouts(cfg, model, data.tokenizer, runner)
        return rollouts, Posttrain(rollouts=rollouts)
    d, pi, pc = cfg.train.dpo, jax.process_index(), jax.process_count()
    pairs = PairBatches(
        _pairs(cfg, d.data, data.tokenizer, "train.dpo.data").arrays,
        cfg.data.batch_size,
        cfg.seed,
        pi,
        pc,
        packing=bool(d.packing),
        row_multiple=jax.local_device_count(),
    )
    post = Posttrain(pairs=pairs)
    if d.eval_data:
        post.eval_arrays = _pairs(cfg, d.eval_data, data.tokenizer, "train.dpo.eval_data").arrays
        post.eval_pairs = pair_eval_batches(post.eval_arrays, cfg.data.batch_size, pi, pc)
    return DeviceFeed(pairs, runner.put_batch, runner.scan_steps), post


def _checksum(cfg, *arrays: dict) -> str:
    """What the cached reference depends on: the pairs, the model, the seed and the starting weights."""
    digest = hashlib.sha256()
    start = {"seed": cfg.seed, "init_from": cfg.model.init_from, "model": cfg.model.to_dict()}
    digest.update(json.dumps(start, sort_keys=True, default=str).encode())
    for a in arrays:
        for k in sorted(a):
            digest.update(f"{k}{a[k].dtype}{a[k].shape}".encode())
            digest.update(np.ascontiguousarray(a[k]).tobytes())
    return digest.hexdigest()


def starting_params(t):
    """The weights a full fine-tune started from: ``model.init_from``, else the seeded init."""
    state = t.runner.init_state(fresh_state_fn(t.cfg, t.model.cfg, t.tx))
    params = t.runner.state_for_save(state).params
    return load_params(t.cfg, params)[0] if t.cfg.model.init_from else params


def _reference_logps(t, params, arrays: dict, batch_size: int) -> dict:
    """``{'ref_chosen', 'ref_rejected'}``: the log-probs of each pair's sides under ``params``."""
    logps = jax.jit(lambda p, tokens, weights: completion_logps(t.model, {"params": p}, tokens, weights)[0])
    out = {}
    for side in SIDES:
        tokens, weights = arrays[side], arrays[f"{side}_weights"]
        parts = [
            np.asarray(logps(params, tokens[i : i + batch_size], weights[i : i + batch_size]))
            for i in range(0, len(tokens), batch_size)
        ]
        out[f"ref_{side}"] = np.concatenate(parts).astype(np.float32)
    return out


def _dpo_reference(t, post: Posttrain, state, fresh: bool) -> None:
    """Gives the pairs (train and held-out) the starting weights' log-probs: from the workdir's cache,
    else computed (from ``state`` on a fresh start, else from the rebuilt starting weights) and cached."""
    assert post.pairs is not None
    arrays = post.pairs.arrays
    key = _checksum(t.cfg, arrays, post.eval_arrays or {})
    path = Path(t.workdir) / REFERENCE
    cached = load(path.read_bytes()) if path.is_file() else {}
    if cached and bytes(cached.pop("key")).decode() == key:
        reference = cached
    else:
        params = t.runner.state_for_save(state).params if fresh else starting_params(t)
        batch = t.cfg.data.batch_size
        reference = _reference_logps(t, params, arrays, batch)
        if post.eval_arrays is not None:
            ev = _reference_logps(t, params, post.eval_arrays, batch)
            reference |= {f"eval_{k}": v for k, v in ev.items()}
        if jax.process_index() == 0:
            write_bytes_atomic(path, save({**reference, "key": np.frombuffer(key.encode(), np.uint8)}))
        print(f"dpo: reference log-probs of {len(arrays['chosen'])} pairs cached in {path}", file=sys.stderr)
    post.pairs.set_reference({k: reference[k] for k in ("ref_chosen", "ref_rejected")})
    if post.eval_arrays is not None:
        post.eval_arrays |= {k: reference[f"eval_{k}"] for k in ("ref_chosen", "ref_rejected")}
        pi, pc = jax.process_index(), jax.process_count()
        post.eval_pairs = pair_eval_batches(post.eval_arrays, t.cfg.data.batch_size, pi, pc)


def start(t, post: Posttrain | None, state, fresh: bool) -> None:
    """Sets a full fine-tune's reference before the first step (a LoRA run's is its base: nothing to do).
    ``fresh``: ``state`` is step 0's (its params are the starting weights)."""
    if post is None or adapters.enabled(t.cfg):
        return
    if post.rollouts is not None:
        post.rollouts.set_reference(starting_params(t))
    else:
        _dpo_reference(t, post, state, fresh)


def eval_pairs(runner, params, batches: list) -> dict[str, float]:
    """``dpo/*``: the DPO loss and metrics of ``params`` over the held-out pairs (means over the pairs)."""
    if not batches:
        return {}
    totals = None
    for batch in batches:
        sums = runner.eval_step(params, runner.put_batch(batch))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    host = jax.device_get(totals)
    pairs = float(host.pop("pairs"))
    return {f"dpo/{k}": float(v) / pairs for k, v in host.items()}
