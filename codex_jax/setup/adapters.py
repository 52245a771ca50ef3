"""A LoRA run (``lora.rank > 0``): the frozen base the runner holds and the adapter tree it trains.

The train state's ``params`` is the adapter tree (``models/lora.py``); the base comes from
``model.init_from`` on every start, is cast to ``lora.base_dtype`` and placed by the runner, and
the checkpoint meta records where it came from (``meta['lora']['base']``) instead of a copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import ml_collections

from codex_jax.models import lora
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import count_params, init_params
from codex_jax.setup import init_from


def enabled(cfg: ml_collections.ConfigDict) -> bool:
    return cfg.lora.rank > 0


def params_item(cfg: ml_collections.ConfigDict) -> str:
    """The checkpoint item of the trained tree: 'lora' for a LoRA run, else 'params'."""
    return "lora" if enabled(cfg) else "params"


def base_shapes(model_cfg: ModelConfig):
    return jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))


def place_base(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, runner, saved=None) -> dict:
    """Loads the base (``model.init_from``) in ``lora.base_dtype`` into ``runner``; returns its
    record for the checkpoint meta (``saved``: the record a resumed run's checkpoint holds)."""
    target = runner.frozen_target(base_shapes(model_cfg))
    base, record = init_from.load_base(cfg, model_cfg, target, saved)
    if cfg.lora.base_dtype:
        base = jax.tree.map(lambda x: x.astype(cfg.lora.base_dtype), base)
    runner.set_frozen(base)
    record["dtype"] = cfg.lora.base_dtype or model_cfg.param_dtype
    print(f"LoRA: frozen {record['dtype']} base from {record['source']}", file=sys.stderr)
    return record


def init_adapters(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig):
    """A fresh adapter tree: ``lora.init_from``'s PEFT adapter, else :func:`lora.init_lora`."""
    if cfg.lora.init_from:
        folder = Path(cfg.lora.init_from[len("peft:") :]).expanduser()
        return lora.import_peft(folder, model_cfg, cfg.lora.alpha, model_cfg.weights_dtype)
    rng = jax.random.fold_in(jax.random.key(cfg.seed), 2)
    return lora.init_lora(
        base_shapes(model_cfg), cfg.lora.rank, cfg.lora.targets, rng, model_cfg.weights_dtype
    )


def meta(cfg: ml_collections.ConfigDict, record: dict, adapter_shapes, model_cfg) -> dict:
    """``meta['lora']`` of a checkpoint: the adapter settings, sizes and the base's record."""
    trainable, frozen = lora.count(adapter_shapes), count_params(base_shapes(model_cfg))
    return {
        "rank": cfg.lora.rank,
        "alpha": cfg.lora.alpha,
        "targets": cfg.lora.targets,
        "trainable_params": trainable,
        "frozen_params": frozen,
        "trainable_fraction": trainable / frozen,
        "base": record,
    }


def merged_params(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, adapters, saved: dict, target):
    """The base of a LoRA checkpoint (``saved``: its ``meta['lora']``) placed as ``target``, in
    ``model.param_dtype``, with ``adapters`` merged: plain params for eval, generate and export."""
    base, _ = init_from.load_base(cfg, model_cfg, target, saved.get("base"))
    return jax.jit(lambda b, a: lora.merge(b, a, model_cfg.lora_alpha))(base, adapters)
