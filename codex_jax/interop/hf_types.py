"""The supported Hugging Face ``model_type``s, one :data:`HF_TYPES` entry each: its architecture class, the
codex_jax family (``models/families.py``), a reader of its ``config.json`` (as the installed transformers
resolves it) into ModelConfig fields (``interop/hf_readers.py``), a writer back (``interop/hf_writers.py``),
and how it names its weights when that differs from Llama's layout (:class:`Names`, read by
``interop/hf_weights.py``). Adding a family is one entry here (and its reader and writer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from codex_jax.interop import hf_readers as read
from codex_jax.interop import hf_writers as write
from codex_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Names:
    """How a ``model_type`` names its weights (Llama's layout unless changed)."""

    layout: str = "llama"  # 'llama' (model.layers.i...) or 'gpt2' (transformer.h.i...)
    mlp: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")  # HF module names of our MLP kernels
    fused_qkv: bool = False  # one qkv_proj (Phi-3)
    fused_gate_up: bool = False  # one gate_up_proj (Phi-3)
    moe_block: str = (
        ""  # a sparse layer's MoE module under model.layers.i ('' : no MoE; interop/hf_experts.py)
    )
    expert_style: str = ""  # its per-expert tensor names: a key of hf_experts.PER_EXPERT_NAMES


@dataclasses.dataclass(frozen=True)
class HFType:
    """One supported Hugging Face ``model_type``."""

    architecture: str
    family: str
    read: Callable[[Any], dict[str, Any]]  # the resolved transformers config -> ModelConfig fields
    write: Callable[[ModelConfig], dict[str, Any]]  # ModelConfig -> config.json fields
    names: Names = Names()


HF_TYPES: dict[str, HFType] = {
    "gpt2": HFType("GPT2LMHeadModel", "gpt2", read.gpt2, write.gpt2, Names(layout="gpt2")),
    "llama": HFType("LlamaForCausalLM", "llama", read.llama, write.llama),
    "mistral": HFType("MistralForCausalLM", "llama", read.llama, write.mistral),
    "qwen2": HFType("Qwen2ForCausalLM", "llama", read.qwen2, write.qwen2),
    "qwen3": HFType("Qwen3ForCausalLM", "qwen3", read.qwen3, write.qwen3),
    "gemma": HFType("GemmaForCausalLM", "gemma", read.gemma_v1, write.gemma),
    "gemma2": HFType("Gemma2ForCausalLM", "gemma2", read.gemma, write.gemma),
    "gemma3_text": HFType("Gemma3ForCausalLM", "gemma3", read.gemma, write.gemma),
    "starcoder2": HFType(
        "Starcoder2ForCausalLM",
        "starcoder2",
        read.starcoder2,
        write.starcoder2,
        Names(mlp=("c_fc", "c_proj")),
    ),
    "phi3": HFType(
        "Phi3ForCausalLM", "phi3", read.phi3, write.phi3, Names(fused_qkv=True, fused_gate_up=True)
    ),
    "mixtral": HFType(
        "MixtralForCausalLM",
        "mixtral",
        read.mixtral,
        write.mixtral,
        Names(moe_block="block_sparse_moe", expert_style="mixtral"),
    ),
    "qwen3_moe": HFType(
        "Qwen3MoeForCausalLM",
        "qwen3_moe",
        read.qwen3_moe,
        write.qwen3_moe,
        Names(moe_block="mlp", expert_style="qwen3_moe"),
    ),
}
ARCHITECTURES = {t.architecture: name for name, t in HF_TYPES.items()}
