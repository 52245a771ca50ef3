"""model.init_from='hf:DIR', Hugging Face tokenizers, export to transformers, the end-of-run sample.

Tiny random GPT-2/Llama checkpoints (save_pretrained, safetensors) and a byte-level BPE tokenizer
trained here on a few stdlib files: no network.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest

from codex_jax.tokenizers import load_tokenizer
from codex_jax.tokenizers.hf import HFTokenizer, save_sentencepiece_as_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 320  # model vocab; the tokenizer has 300 ids
EOS = "<|endoftext|>"
CODE = 'def f(x):\n    """Ünïcode 漢字."""\n\treturn x  + 1\n\n\n'


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer.json (300 ids, EOS = BOS = id 0) trained on stdlib files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    lib = Path(sysconfig.get_paths()["stdlib"])
    tok.train([str(lib / n) for n in ("textwrap.py", "bisect.py", "heapq.py")], trainer)
    folder = tmp_path_factory.mktemp("tokenizer")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS)
    fast.save_pretrained(folder)
    return folder


def _hf_model(kind: str, tokenizer_dir: Path, folder: Path) -> Path:
    """A random ``kind`` model (2 layers, d 64, biases and norms perturbed) + the tokenizer."""
    t = transformers
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    if kind == "gpt2":
        config = t.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **common)
    else:
        config = t.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            **common,
        )
    torch.manual_seed(0)
    model = t.AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            norm = "ln" in name or "norm" in name
            p.copy_((1.0 if norm and name.endswith("weight") else 0.0) + 0.08 * noise)
    model.save_pretrained(folder, safe_serialization=True)
    HFTokenizer.load(tokenizer_dir).save(folder)
    return folder


@pytest.fixture(scope="module")
def hf_dirs(tokenizer_dir, tmp_path_factory):
    return {k: _hf_model(k, tokenizer_dir, tmp_path_factory.mktemp(k)) for k in ("gpt2", "llama")}


def _torch_loss_and_logits(folder, windows: np.ndarray):
    """transformers' mean next-token loss over ``windows`` [N, T+1], and its logits."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokens = torch.tensor(np.asarray(windows, np.int64))
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    return float(loss), logits.numpy()


def _tiny(*overrides: str):
    """configs/tiny.py with ``key=value`` overrides (values parsed as Python literals)."""
    import ast

    from codex_jax.configs import tiny

    cfg = tiny.get_config()
    for item in overrides:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value if isinstance(node[leaf], str) else ast.literal_eval(value)
    return cfg


# ------------------------------------------------------------------------------------- tokenizers


def test_hf_tokenizer_round_trip_and_interface(tokenizer_dir, tmp_path):
    tok = load_tokenizer(tokenizer_dir)
    assert isinstance(tok, HFTokenizer)
    assert (tok.vocab_size, tok.eos_id, tok.bos_id, tok.pad_id, tok.unk_id) == (300, 0, 0, -1, -1)
    ids = tok.encode(CODE)
    assert tok.decode(ids) == CODE and 0 not in ids
    assert tok.encode_batch([CODE, "x = 1"]) == [ids, tok.encode("x = 1")]
    assert tok.decode(ids + [tok.eos_id]) == CODE  # special tokens decode to nothing
    copy = tmp_path / "copy"
    tok.save(copy)
    assert HFTokenizer.load(copy).checksum == tok.checksum
    (copy / "tokenizer_config.json").write_text(
        (copy / "tokenizer_config.json").read_text().replace("}", ', "model_max_length": 7}', 1)
    )
    assert HFTokenizer.load(copy).checksum != tok.checksum  # every tokenizer file is hashed


def test_run_tokenizer_selection(tokenizer_dir, hf_dirs, tmp_path):
    from codex_jax.data.pipeline import load_run_tokenizer
    from codex_jax.errors import UserError
    from codex_jax.models.config import ModelConfig
    from codex_jax.setup.model import check_vocab

    # data.tokenizer may name a Hugging Face folder without model.init_from ...
    tok, where = load_run_tokenizer(_tiny(f"data.tokenizer={tokenizer_dir}"), tmp_path)
    assert isinstance(tok, HFTokenizer) and where == str(tokenizer_dir)
    # ... model.init_from's folder is the default ...
    tok, where = load_run_tokenizer(_tiny(f"model.init_from=hf:{hf_dirs['llama']}"), tmp_path)
    assert isinstance(tok, HFTokenizer) and where == str(hf_dirs["llama"])
    # ... and without either, a run that never trained one has none.
    with pytest.raises(UserError, match="no tokenizer in"):
        load_run_tokenizer(_tiny(), tmp_path)
    with pytest.raises(UserError, match="more than the model's vocab_size=256"):
        check_vocab(tok, ModelConfig(vocab_size=256), where)


def test_sentencepiece_converts_to_an_identical_transformers_tokenizer(tmp_path):
    from codex_jax.corpus.sources import read_source
    from codex_jax.tokenizers import sentencepiece as spt

    texts = [d.text for d in read_source("stdlib", max_files=20).documents]
    spm = spt.train_bpe(spt.training_lines(texts, 200_000), 400)
    folder = save_sentencepiece_as_hf(spm.save(tmp_path / "spm"), tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for text in [*texts[:5], CODE]:
        ids = spm.encode(text)
        assert hf_tok.encode(text, add_special_tokens=False) == ids
        assert hf_tok.decode(ids, skip_special_tokens=True) == text
    assert (hf_tok.eos_token_id, hf_tok.bos_token_id, hf_tok.pad_token_id) == (2, 1, 3)


# ------------------------------------------------------------------------------------ init_from


@pytest.mark.parametrize("parallel", ["jit_fsdp", "pmap"])
def test_llama_init_from_starts_at_transformers_loss(hf_dirs, tmp_path, parallel):
    """In process, 8 devices: the fresh state's eval loss is transformers' (FSDP-sharded/pmap)."""
    from codex_jax.evaluate import evaluate
    from codex_jax.train.loop import build_trainer, init_or_restore

    sharding = (
        ["parallel.mesh.fsdp=2", "parallel.fsdp_min_size=1024"]
        if parallel == "jit_fsdp"
        else ["parallel.mode=pmap"]
    )
    cfg = _tiny(f"model.init_from=hf:{hf_dirs['llama']}", "logging.writers=ndjson", *sharding)
    t = build_trainer(cfg, tmp_path)
    assert t.model.cfg.family == "llama" and t.model.cfg.vocab_size == VOCAB
    assert t.data.tokenizer.checksum == HFTokenizer.load(hf_dirs["llama"]).checksum
    state = init_or_restore(t, None)  # a fresh start
    ours = evaluate(t.runner, t.runner.params(state), t.eval_data)["loss"]
    loss, _ = _torch_loss_and_logits(hf_dirs["llama"], np.concatenate(t.eval_data))
    assert abs(ours - loss) < 1e-4
    t.checkpointer.close()


def test_gpt2_with_grouped_query_attention_is_not_exported():
    from codex_jax.errors import UserError
    from codex_jax.interop.hf_config import config_to_hf
    from codex_jax.models.config import ModelConfig

    with pytest.raises(UserError, match="no Hugging Face GPT2LMHeadModel holds this model.*num_kv_heads=2"):
        config_to_hf(ModelConfig(family="gpt2", num_heads=4, num_kv_heads=2))
