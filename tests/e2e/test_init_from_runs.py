"""Hugging Face folders through the CLI, for real: a run initialised from one trains, samples and exports
back to transformers; a SentencePiece run exports weights and tokenizer; pickle-only weights are refused."""

# ruff: noqa: F811 (the unit module's fixtures, imported here, are the tests' parameters)
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_metrics, restore_params, run_cli
from test_init_from import (  # noqa: F401 (hf_dirs, tokenizer_dir: fixtures)
    CODE,
    VOCAB,
    _tiny,
    _torch_loss_and_logits,
    hf_dirs,
    tokenizer_dir,
)

transformers = pytest.importorskip("transformers")


def test_gpt2_init_from_trains_samples_and_exports_to_transformers(hf_dirs, tmp_path):
    wd, out = tmp_path / "run", tmp_path / "export"
    init = f"--config.model.init_from=hf:{hf_dirs['gpt2']}"
    steps = ["--config.train.steps=4", "--config.checkpoint.every_steps=4"]
    result = run_cli(wd, init, *steps)
    assert "model.init_from: architecture from" in result.stderr
    assert "num_kv_heads=2->4" in result.stderr and "d_model=64" not in result.stderr  # differing
    assert "step 4 sample: def fibonacci(n):" in result.stdout  # the console writer's line
    meta = json.loads((wd / "checkpoints/4/meta/metadata").read_text())
    assert meta["model"]["vocab_size"] == VOCAB and meta["model"]["max_seq_len"] == 128

    from codex_jax.data.pipeline import eval_batches, prepare_data

    cfg = _tiny(init[len("--config.") :])
    data = prepare_data(cfg, wd, write=False)
    assert data.manifest["tokenizer"]["path"] == str(hf_dirs["gpt2"])
    windows = np.concatenate(eval_batches(data.eval_windows, 8, cfg.eval.num_batches))
    loss, _ = _torch_loss_and_logits(hf_dirs["gpt2"], windows)
    assert abs(read_metrics(wd, "eval")[0]["loss"] - loss) < 1e-4  # step 0: the imported model

    run_cli(wd, init, "--config.export.format=hf", f"--config.export.dir={out}", mode="export")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 0
    _, hf_logits = _torch_loss_and_logits(out, windows)
    _assert_our_logits(wd, 4, cfg, windows, hf_logits)
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok.encode(CODE, add_special_tokens=False) == data.tokenizer.encode(CODE)


def _assert_our_logits(wd, step, cfg, windows, hf_logits):
    """The checkpoint's logits (codex_jax) equal ``hf_logits`` (transformers on the export)."""
    from codex_jax.models.transformer import Transformer
    from codex_jax.setup.model import model_config

    model = Transformer(model_config(cfg))
    params = restore_params(wd, step)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(windows[:, :-1])))
    assert np.abs(ours - hf_logits).max() < 1e-4


def test_sentencepiece_run_exports_weights_and_tokenizer(tmp_path):
    wd, out = tmp_path / "run", tmp_path / "export"
    mha = "--config.model.num_kv_heads=4"  # Hugging Face GPT-2 has no grouped-query attention
    small = "--config.data.tokenizer_train_bytes=300000"
    result = run_cli(wd, mha, small, "--config.train.steps=2", "--config.generate.max_new_tokens=0")
    assert "sample" not in result.stdout  # generate.max_new_tokens=0: no sample
    run_cli(wd, mha, small, "--config.export.format=hf", f"--config.export.dir={out}", mode="export")
    cfg = _tiny("model.num_kv_heads=4", "data.tokenizer_train_bytes=300000")
    from codex_jax.tokenizers.sentencepiece import SentencePieceTokenizer

    spm = SentencePieceTokenizer.load(wd / "tokenizer")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert hf_tok.encode(CODE, add_special_tokens=False) == spm.encode(CODE)
    exported = json.loads((out / "config.json").read_text())
    assert (exported["eos_token_id"], exported["bos_token_id"]) == (spm.eos_id, spm.bos_id)
    windows = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, 17))
    _, hf_logits = _torch_loss_and_logits(out, windows)
    _assert_our_logits(wd, 2, cfg, windows, hf_logits)


def test_pickle_only_folder_is_refused(tmp_path, hf_dirs):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((hf_dirs["gpt2"] / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not unpickled")
    result = run_cli(tmp_path / "wd", f"--config.model.init_from=hf:{folder}", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "only pickle weights (pytorch_model.bin)" in result.stderr
    bad = run_cli(tmp_path / "wd", "--config.model.init_from=/no/prefix", check=False)
    assert bad.returncode == 2 and "model.init_from" in bad.stderr
