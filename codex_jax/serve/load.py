"""What ``codex-jax serve`` serves: a run's checkpoint (as ``generate`` restores it: ``eval.step``,
EMA under ``eval.use_ema``, a LoRA run's adapters merged) or a Hugging Face folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ml_collections

from codex_jax.data.examples import chat_template_text
from codex_jax.data.pipeline import load_run_tokenizer
from codex_jax.interop.hf_weights import import_checkpoint
from codex_jax.setup.weights import restore_params
from codex_jax.tokenizers import load_tokenizer
from codex_jax.tokenizers.chat import hf_template


@dataclasses.dataclass
class Served:
    """A model, its params, tokenizer and chat template ('' for the tokenizer's own or the built-in)."""

    model: Any
    params: Any
    tokenizer: Any
    chat_template: str
    name: str


def from_workdir(cfg: ml_collections.ConfigDict, workdir: Path) -> Served:
    """Checkpoint ``eval.step`` of the run in ``workdir``, with the run's tokenizer."""
    model, params, step = restore_params(cfg, workdir)
    tokenizer, _ = load_run_tokenizer(cfg, workdir, write=False)
    return Served(model, params, tokenizer, chat_template_text(cfg.data, tokenizer), f"{workdir.name}@{step}")


def from_hf_folder(folder: str) -> Served:
    """The weights (float32) and tokenizer of a Hugging Face folder."""
    model, params = import_checkpoint(folder)
    tokenizer = load_tokenizer(folder)
    return Served(model, params, tokenizer, hf_template(tokenizer), Path(folder).name)
