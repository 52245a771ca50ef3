"""Bad Hugging Face folders through the real CLI (``configs/lora.py:hf:FOLDER``): an unsupported model_type, a
missing config.json field, a tensor whose shape config.json contradicts, an unsupported RoPE scaling. Each is
one ``error:`` line naming what was wrong and exit 2, never a traceback."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import run_cli
from sft_helpers import SFT

transformers = pytest.importorskip("transformers")

SHAPES = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
RUN = [
    f"--config.data.source=jsonl:{SFT}/chat.jsonl",
    "--config.data.format=chat",
    "--config.data.seq_len=32",
    "--config.data.batch_size=2",
    "--config.train.steps=1",
    "--config.train.warmup_steps=0",
    "--config.generate.max_new_tokens=0",
    "--config.logging.writers=ndjson",
]


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    """A tiny random Qwen3 folder (weights, config.json, a chat tokenizer) that trains."""
    from hf_helpers import random_hf_model
    from sft_helpers import chat_tokenizer_folder

    folder = tmp_path_factory.mktemp("qwen3")
    random_hf_model(transformers.Qwen3Config(**SHAPES, head_dim=24), folder)
    return chat_tokenizer_folder(folder)


def _variant(base, folder, edit):
    """A copy of ``base`` whose config.json is ``edit(config)``."""
    shutil.copytree(base, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(config)))
    return folder


def _bert(c):
    return {**c, "architectures": ["BertForMaskedLM"], "model_type": "bert"}


def _no_layers(c):
    return {k: v for k, v in c.items() if k != "num_hidden_layers"}


def _narrow_mlp(c):
    return {**c, "intermediate_size": 96}


def _dynamic_ntk(c):
    return {**c, "rope_parameters": dict(rope_type="dynamic", factor=2.0, rope_theta=1e6)}


CASES = {
    "unsupported_model_type": (
        _bert,
        r"config\.json: unsupported architectures=\['BertForMaskedLM'\] \(model_type='bert'\); supported "
        r"model_types: gpt2, llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, starcoder2, phi3, ",
    ),
    "missing_field": (_no_layers, r"config\.json \(qwen3\): missing key 'num_hidden_layers'"),
    "tensor_shape": (
        _narrow_mlp,
        r"model\.layers\.0\.mlp\.gate_proj\.weight has shape \(128, 64\); config\.json implies \(96, 64\)",
    ),
    "dynamic_rope": (
        _dynamic_ntk,
        r"config\.json: rope type 'dynamic' \(have: default, linear, llama3, yarn\) is not supported",
    ),
}


def _phi3_longrope(folder):
    """A Phi-3 config.json with a (valid) longrope scaling, the Phi-3.5/4 long-context kind."""
    config = transformers.Phi3Config(
        **SHAPES,
        original_max_position_embeddings=64,
        rope_parameters=dict(
            rope_type="longrope",
            rope_theta=10000.0,
            short_factor=[1.0] * 8,
            long_factor=[2.0] * 8,
            original_max_position_embeddings=64,
        ),
    ).to_dict()
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["Phi3ForCausalLM"]}))
    return folder


def _assert_one_error(result, pattern):
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-2000:]
    assert re.search(pattern, errors[0]), errors[0]
    assert not (result.stdout.strip() and "Traceback" in result.stdout)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_hf_folder_is_one_error_line(case, qwen3_folder, tmp_path):
    edit, pattern = CASES[case]
    folder = _variant(qwen3_folder, tmp_path / "hf", edit)
    result = run_cli(tmp_path / "run", *RUN, config=f"lora.py:hf:{folder}", check=False)
    _assert_one_error(result, pattern)
    assert not list((tmp_path / "run").glob("checkpoints/[0-9]*"))  # nothing trained


def test_phi3_longrope_is_named(tmp_path):
    folder = _phi3_longrope(tmp_path / "hf")
    result = run_cli(tmp_path / "run", *RUN, config=f"lora.py:hf:{folder}", check=False)
    _assert_one_error(result, r"config\.json: rope type 'longrope' \(have: default, linear, llama3, yarn\)")
