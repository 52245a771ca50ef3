"""An SFT run end to end (issue 14): LoRA over a local Hugging Face base on the example chat set learns,
answers a training prompt through --mode=generate with the chat template, and its adapters load in peft."""

from __future__ import annotations

import json

import pytest
from conftest import read_metrics, run_cli
from sft_helpers import SFT, chat_tokenizer_folder

from codex_jax.corpus.examples import ExampleFields
from codex_jax.corpus.sources import read_source
from codex_jax.corpus.splits import split_documents

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

STEPS = 80


def _base(folder):
    """A random tiny Llama with the ChatML test tokenizer, as a Hugging Face folder."""
    chat_tokenizer_folder(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=2,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return _base(tmp_path_factory.mktemp("base"))


def test_sft_full_fine_tune_learns_and_answers_a_training_prompt(base, tmp_path):
    """configs/sft.py with --config.lora.rank=0: held-out answer loss halves, a training prompt's answer comes
    back greedily (the post-training sample wraps generate.prompt as a user turn)."""
    docs = read_source(f"jsonl:{SFT}/chat.jsonl", fields=ExampleFields("chat")).documents
    train, _ = split_documents(docs, 0.2)
    user, answer = train[0].turns[-2][1], train[0].turns[-1][1]
    wd = tmp_path / "run"
    result = run_cli(
        wd,
        "--config.data.seq_len=128",
        "--config.lora.rank=0",
        "--config.train.learning_rate=3e-3",
        f"--config.train.steps={STEPS}",
        f"--config.train.eval_every={STEPS}",
        f"--config.checkpoint.every_steps={STEPS}",
        "--config.generate.max_new_tokens=24",
        "--config.generate.temperature=0",  # greedy: the memorised answer
        f"--config.generate.prompt={user}",
        "--config.logging.progress=False",
        config=f"sft.py:hf:{base}",
    )
    evals = read_metrics(wd, "eval")
    assert evals[STEPS]["loss"] <= evals[0]["loss"] / 2, evals
    assert f"sample: {user}\n{answer}\n" in result.stdout, result.stdout
    manifest = json.loads((wd / "data_manifest.json").read_text())
    assert 0 < manifest["packing"]["train"]["trained_fraction"] < 0.6


def test_sft_lora_adapters_export_to_peft(base, tmp_path):
    wd, out = tmp_path / "run", tmp_path / "adapter"
    common = ["--config.data.seq_len=128", "--config.lora.base_dtype=float32", "--config.train.steps=2"]
    common += ["--config.train.warmup_steps=1"]
    common += [
        "--config.train.eval_every=2",
        "--config.checkpoint.every_steps=2",
        "--config.generate.max_new_tokens=2",
    ]
    run_cli(wd, *common, config=f"sft.py:hf:{base}")
    run_cli(
        wd,
        *common,
        "--config.export.format=peft",
        f"--config.export.dir={out}",
        mode="export",
        config=f"sft.py:hf:{base}",
    )
    peft = pytest.importorskip("peft")
    model = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(base), out
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(base)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 320) and bool(torch.isfinite(logits).all())
