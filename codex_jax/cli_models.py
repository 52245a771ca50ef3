"""``codex-jax models [--json]``: the model families, the Hugging Face ``model_type``s each reads, and the
presets with their parameter counts.

It reads the family table (``models/families.py``), the Hugging Face table (``interop/hf_types.py``) and the
presets (``models/registry.py``, plugins included), so it sits at the command-line level above them.
"""

from __future__ import annotations

import json

from codex_jax.interop.hf_types import HF_TYPES
from codex_jax.models import registry
from codex_jax.models.families import FAMILIES
from codex_jax.models.sizes import num_params


def catalogue() -> dict:
    """``{'families': {name: {'about', 'hf_model_types', 'hf_architectures'}}, 'presets': {name: {...}}}``."""
    families = {
        name: {
            "about": about,
            "hf_model_types": [t for t, entry in HF_TYPES.items() if entry.family == name],
            "hf_architectures": [entry.architecture for entry in HF_TYPES.values() if entry.family == name],
        }
        for name, (about, _) in FAMILIES.items()
    }
    presets = {}
    for name in registry.names():
        cfg = registry.config(name)
        presets[name] = {
            "family": cfg.family,
            "num_layers": cfg.num_layers,
            "d_model": cfg.d_model,
            "num_heads": cfg.num_heads,
            "num_kv_heads": cfg.num_kv_heads,
            "vocab_size": cfg.vocab_size,
            "params": num_params(cfg),
        }
    return {"families": families, "presets": presets}


def main(argv: list[str]) -> int:
    """Prints the catalogue (``--json``: as one JSON object)."""
    found = catalogue()
    if "--json" in argv:
        print(json.dumps(found, indent=2))
        return 0
    print("families (model.family; Hugging Face model_types read by model.init_from=hf:FOLDER):")
    for name, f in found["families"].items():
        print(f"  {name:<11} {', '.join(f['hf_model_types']):<28} {f['about']}")
    print("\npresets (model.preset=NAME):")
    print(
        "  {:<16} {:<11} {:>6} {:>7} {:>7} {:>7} {:>8}".format(
            "name", "family", "layers", "d_model", "heads", "vocab", "params"
        )
    )
    for name, p in found["presets"].items():
        heads = f"{p['num_heads']}/{p['num_kv_heads']}"
        print(
            f"  {name:<16} {p['family']:<11} {p['num_layers']:>6} {p['d_model']:>7} {heads:>7} "
            f"{p['vocab_size']:>7} {p['params'] / 1e9:>7.3f}B"
        )
    return 0
