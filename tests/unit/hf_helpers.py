"""Tiny random Hugging Face models for parity tests: every parameter moved off its default init."""

from __future__ import annotations

import torch
import transformers


def random_hf_model(config, folder=None):
    """A transformers model of ``config`` whose every parameter is perturbed (default init leaves biases at 0
    and norms at 1, which would hide a wrong mapping), in eval mode; saved as safetensors to ``folder``."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "ln" in name or "norm" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(0.08 * noise)
    model.eval()
    if folder is not None:
        model.save_pretrained(folder, safe_serialization=True)
    return model
