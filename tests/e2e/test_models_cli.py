"""``codex-jax models [--json]`` for real: every family with the Hugging Face model_types it reads, every
preset with the parameter count its init makes (by shape, for a few) and the published counts of models."""

from __future__ import annotations

import json

import jax
import pytest
from conftest import run_python

from codex_jax.interop.hf_config import HF_TYPES
from codex_jax.models import registry
from codex_jax.models.families import FAMILIES
from codex_jax.models.sizes import count_params
from codex_jax.models.transformer import init_params

# Parameter counts of the released checkpoints (their safetensors metadata / model cards).
PUBLISHED = {
    "qwen3-0.6b": 596_049_920,
    "gemma-3-1b": 999_885_952,
    "gemma-2-2b": 2_614_341_888,
    "starcoder2-3b": 3_030_371_328,
    "phi-3-mini-4k": 3_821_079_552,
    "llama-3.2-1b": 1_235_814_400,
}


@pytest.fixture(scope="module")
def catalogue():
    result = run_python(["-m", "codex_jax.cli", "models", "--json"], timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_json_lists_every_family_with_its_model_types(catalogue):
    families = catalogue["families"]
    assert list(families) == list(FAMILIES)
    for name, entry in families.items():
        assert entry["about"] == FAMILIES[name][0]
        assert entry["hf_model_types"] == [t for t, e in HF_TYPES.items() if e.family == name]
    assert families["llama"]["hf_model_types"] == ["llama", "mistral", "qwen2"]
    assert families["gemma3"]["hf_model_types"] == ["gemma3_text"]
    assert families["phi3"]["hf_architectures"] == ["Phi3ForCausalLM"]
    assert sorted(t for f in families.values() for t in f["hf_model_types"]) == sorted(HF_TYPES)


def test_json_lists_every_preset_with_its_parameter_count(catalogue):
    presets = catalogue["presets"]
    assert sorted(presets) == registry.names()
    for name, count in PUBLISHED.items():
        assert presets[name]["params"] == count, name
    for name in ("qwen3-0.6b", "gemma-3-1b", "starcoder2-3b"):  # what init makes, by shape only
        cfg = registry.config(name)
        shapes = jax.eval_shape(lambda cfg=cfg: init_params(cfg, jax.random.key(0)))
        assert presets[name]["params"] == count_params(shapes), name
        assert presets[name]["family"] == cfg.family and presets[name]["num_layers"] == cfg.num_layers


def test_text_table_names_every_family_and_preset(catalogue):
    result = run_python(["-m", "codex_jax.cli", "models"], timeout=180)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for name, entry in catalogue["families"].items():
        row = next(line for line in lines if line.split()[:1] == [name])
        assert ", ".join(entry["hf_model_types"]) in row
    for name, entry in catalogue["presets"].items():
        row = next(line for line in lines if line.split()[:1] == [name])
        assert row.split()[1] == entry["family"] and row.split()[-1] == f"{entry['params'] / 1e9:.3f}B"
