"""A LoRA run (``lora.rank > 0``): the adapter tree it trains over a frozen base.

The train state's ``params`` is the adapter tree (``models/lora.py``); the base comes from
``model.init_from`` on every start (``setup/weights.place_base``), is cast to ``lora.base_dtype``
and placed by the runner, and the checkpoint meta records where it came from
(``meta['lora']['base']``) instead of a copy.
"""

from __future__ import annotations

import jax
import ml_collections

from codex_jax.config.runspec import RunSpec
from codex_jax.interop import peft
from codex_jax.models import lora
from codex_jax.models.config import ModelConfig
from codex_jax.models.sizes import count_params
from codex_jax.models.transformer import init_params


def enabled(cfg: ml_collections.ConfigDict) -> bool:
    """Whether ``cfg`` is a LoRA run (``lora.rank > 0``)."""
    return cfg.lora.rank > 0


def base_shapes(model_cfg: ModelConfig):
    return jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))


def init_adapters(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig):
    """A fresh adapter tree: ``lora.init_from``'s PEFT adapter, else :func:`lora.init_lora`."""
    folder = RunSpec.from_config(cfg).peft_folder
    if folder is not None:
        return peft.import_peft(folder, model_cfg, cfg.lora.alpha, model_cfg.weights_dtype)
    rng = jax.random.fold_in(jax.random.key(cfg.seed), 2)
    return lora.init_lora(
        base_shapes(model_cfg),
        cfg.lora.rank,
        cfg.lora.targets,
        rng,
        model_cfg.weights_dtype,
        experts=cfg.lora.experts,
    )


def meta(cfg: ml_collections.ConfigDict, record: dict, adapter_shapes, model_cfg) -> dict:
    """``meta['lora']`` of a checkpoint: the adapter settings, sizes and the base's record."""
    trainable, frozen = lora.count(adapter_shapes), count_params(base_shapes(model_cfg))
    return {
        "rank": cfg.lora.rank,
        "alpha": cfg.lora.alpha,
        "targets": cfg.lora.targets,
        "experts": cfg.lora.experts,
        "trainable_params": trainable,
        "frozen_params": frozen,
        "trainable_fraction": trainable / frozen,
        "base": record,
    }
