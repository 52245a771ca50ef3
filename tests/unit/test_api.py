"""codex_jax.api (the notebooks' entry) and the packaged configs: loading, overrides, errors."""

from __future__ import annotations

import json

import pytest
from conftest import CONFIGS

from codex_jax import api
from codex_jax.config.packaged import packaged, resolve
from codex_jax.config.schema import flatten
from codex_jax.errors import UserError


def test_packaged_configs_resolve_by_name_and_a_real_file_wins(tmp_path, monkeypatch):
    assert set(packaged()) == {
        "base",
        "tiny",
        "lora",
        "sft",
        "dpo",
        "grpo",
        "gpt2_small",
        "llama_1b",
        "qwen3_0_6b",
        "qwen3_30b_a3b",
        "gemma3_1b",
        "starcoder2_3b",
    }
    monkeypatch.chdir(tmp_path)
    for spec in ("configs/tiny.py", "tiny.py", "tiny"):
        assert resolve(spec) == str(CONFIGS / "tiny.py")
    assert resolve("configs/lora.py:hf:/m") == f"{CONFIGS / 'lora.py'}:hf:/m"
    for spec in ("configs/nope.py", "/abs/configs/tiny.py", "other/tiny.py"):
        assert resolve(spec) == spec  # not packaged names: left for the loader to report
    (tmp_path / "tiny").mkdir()  # a folder of that name is not a config file
    assert resolve("tiny") == str(CONFIGS / "tiny.py")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/tiny.py").write_text("raise SystemExit")
    assert resolve("configs/tiny.py") == "configs/tiny.py"


def test_load_config_applies_overrides_and_names_bad_keys():
    cfg = api.load_config("tiny", {"train.steps": 3, "model.family": "llama", "train.learning_rate": 1})
    assert (cfg.train.steps, cfg.model.family, cfg.train.learning_rate) == (3, "llama", 1.0)
    lora = api.load_config("configs/lora.py:hf:/models/x")
    assert lora.model.init_from == "hf:/models/x" and lora.lora.rank == 16
    with pytest.raises(UserError, match="config key 'train.stepz': unknown key"):
        api.load_config("tiny", {"train.stepz": 3})
    with pytest.raises(UserError, match="config key 'train.steps'"):
        api.load_config("tiny", {"train.steps": "three"})
    with pytest.raises(UserError, match="'nope.py': no such file"):
        api.load_config("nope.py")


def test_workdir_config_round_trips_config_json(tmp_path):
    cfg = api.load_config("tiny", {"train.steps": 7, "data.source": "/src/**/*.py"})
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    again = api.workdir_config(tmp_path, {"eval.step": "best"})
    assert flatten(again) == {**flatten(cfg), "eval.step": "best"}
    with pytest.raises(UserError, match="config.json: cannot read"):
        api.workdir_config(tmp_path / "missing")
