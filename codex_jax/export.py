"""``--mode=export``: writes checkpoint ``eval.step`` of a workdir in the format ``export.format``.

``params``: a params-only Orbax checkpoint (``checkpoints/<step>/params`` + ``meta``, with its
sha256 manifest), ``config.json`` and the tokenizer; the folder is itself a workdir that
``--mode=eval`` and ``--mode=generate`` accept (eval rebuilds the token cache there from
``data.source``). Other formats register in :data:`EXPORTERS`.

``hf``: ``config.json`` + ``model.safetensors`` (``interop/hf_weights.export_checkpoint``, with the
tokenizer's eos/bos/pad ids) and the tokenizer for ``transformers.AutoTokenizer``: a Hugging Face
tokenizer's files are copied; a SentencePiece model is written as ``tokenizer.model`` plus its
``LlamaTokenizer`` conversion (``tokenizer.json``), which encodes identically.

A LoRA run (``lora.rank > 0``) exports its adapters merged into the base with ``params`` (as a
plain run: ``lora.rank=0`` in the written config) and ``hf``, or alone with ``peft``:
``adapter_config.json`` + ``adapter_model.safetensors`` (``interop/peft.export_peft``) that
``peft.PeftModel.from_pretrained`` loads over the base in Hugging Face form (the
``model.init_from`` folder, or the base run exported with ``hf``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from codex_jax.config.runspec import RUN_CONFIG, RunSpec
from codex_jax.data.pipeline import load_run_tokenizer
from codex_jax.errors import UserError
from codex_jax.files import absolute, as_path, copytree, write_json
from codex_jax.interop import hf_config, peft
from codex_jax.interop.hf_weights import export_checkpoint
from codex_jax.setup.checkpoints import open_checkpoints
from codex_jax.setup.weights import load_checkpoint
from codex_jax.tokenizers.hf import HFTokenizer, save_sentencepiece_as_hf


def export(cfg: ml_collections.ConfigDict, workdir: Path) -> Path:
    """Exports ``workdir``'s checkpoint ``eval.step``; returns the folder written."""
    out = absolute(cfg.export.dir or workdir / "export")  # a local folder or a gs:// prefix
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"config key 'export.dir': {out} exists and is not an empty folder")
    return EXPORTERS[cfg.export.format](cfg, workdir, out)


def export_params(cfg: ml_collections.ConfigDict, workdir: Path, out: Path) -> Path:
    """A params-only checkpoint + config.json + tokenizer in ``out``."""
    restored = load_checkpoint(cfg, workdir)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.data.tokenizer and (workdir / "tokenizer").is_dir() and jax.process_index() == 0:
        copytree(workdir / "tokenizer", out / "tokenizer")
    meta, config = dict(restored.meta), cfg.to_dict()
    if meta.pop("lora", None) is not None:  # merged: the folder is a plain (non-LoRA) run
        meta["config"] = config = _without_lora(config)
    checkpointer = open_checkpoints(out, read_only=False)
    try:
        checkpointer.save_params(restored.step, restored.params, meta)
    finally:
        checkpointer.close()
    write_json(out / RUN_CONFIG, config, main_process=jax.process_index() == 0)
    return out


def _without_lora(config: dict) -> dict:
    return {**config, "lora": {**config["lora"], "rank": 0, "init_from": ""}}


def export_peft(cfg: ml_collections.ConfigDict, workdir: Path, out: Path) -> Path:
    """A LoRA run's adapters as a PEFT adapter folder (see the module docstring)."""
    if cfg.lora.rank <= 0:
        raise UserError(
            "config key 'export.format': 'peft' exports the adapters of a LoRA run (lora.rank > 0)"
        )
    restored = load_checkpoint(cfg, workdir, merge=False)
    hf_config.config_to_hf(restored.model.cfg)  # refuses models with no Hugging Face form
    trained = restored.adapters
    if jax.process_count() > 1:  # every process joins the gather; process 0 writes
        trained = multihost_utils.process_allgather(trained, tiled=True)
    if jax.process_index() == 0:
        folder = RunSpec.from_config(cfg).hf_folder
        peft.export_peft(
            restored.model.cfg,
            jax.tree.map(np.asarray, trained),
            cfg.lora.alpha,
            out,
            dropout=cfg.lora.dropout,
            base_name=str(folder) if folder else None,
        )
    return out


def export_hf(cfg: ml_collections.ConfigDict, workdir: Path, out: Path) -> Path:
    """config.json + model.safetensors + tokenizer files that transformers loads from ``out``."""
    tokenizer, where = load_run_tokenizer(cfg, workdir)
    restored = load_checkpoint(cfg, workdir)
    params = restored.params
    if jax.process_count() > 1:  # every process joins the gather; process 0 writes
        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
        return out
    ids = {"eos": tokenizer.eos_id, "bos": tokenizer.bos_id, "pad": tokenizer.pad_id}
    extra = {f"{k}_token_id": v for k, v in ids.items() if v >= 0}
    export_checkpoint(restored.model, jax.tree.map(np.asarray, params), out, extra_config=extra)
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.save(out)
    else:
        spm_model = as_path(where) / "spm.model" if as_path(where).is_dir() else as_path(where)
        save_sentencepiece_as_hf(spm_model, out)
    return out


EXPORTERS: dict[str, Callable[[ml_collections.ConfigDict, Path, Path], Path]] = {
    "params": export_params,
    "hf": export_hf,
    "peft": export_peft,
}
