"""Tokenizers: SentencePiece lossless on any text, deterministic, exact vocab, reuse rules; the
shared batch interface (truncation, padding, attention masks) for SentencePiece and HF alike."""

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_jax.corpus.sources import read_source
from codex_jax.errors import UserError
from codex_jax.tokenizers import sentencepiece as spt
from codex_jax.tokenizers.base import Batch, pad, truncate
from codex_jax.tokenizers.sentencepiece import SentencePieceTokenizer, train_bpe, train_model
from codex_jax.tokenizers.train import load_or_train

VOCAB = 400


@pytest.fixture(scope="module")
def stdlib_texts():
    """Real code: 60 stdlib files, the same on every run."""
    return [d.text for d in read_source("stdlib", max_files=60).documents]


@pytest.fixture(scope="module")
def tokenizer(stdlib_texts):
    return train_bpe(spt.training_lines(stdlib_texts, 300_000), VOCAB)


def _tricky_stdlib_texts(limit=4):
    """Stdlib files with non-ASCII characters, long space runs, odd endings (and tabs, if any)."""
    docs = [d.text for d in read_source("stdlib").documents]
    tests = [
        lambda t: "\t" in t,
        lambda t: any(ord(c) > 127 for c in t),
        lambda t: " " * 16 in t,
        lambda t: t.endswith("\n\n") or not t.endswith("\n"),
    ]
    return [t for test in tests for t in [d for d in docs if test(d)][:limit]]


def test_round_trip_is_exact_on_real_stdlib_code(tokenizer, stdlib_texts):
    texts = stdlib_texts[:20] + _tricky_stdlib_texts()
    assert any(ord(c) > 127 for t in texts for c in t)  # (stdlib .py files hold no tabs)
    for text, ids in zip(texts, tokenizer.encode_batch(texts), strict=True):
        assert tokenizer.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n\tif x:\n        return  'é€😀'\n\n\n",
        "  leading spaces\r\nand a CR\rend  ",
        "\n\n\t\t\n   \n",
        "x = 1  # trailing spaces   \n",
        "a\x00b\x01\x7f\r\r\n\u2028\ufeff",
        "x\u2581y \u2581\u2581 \u2581",  # SentencePiece's own space symbol, literally
        "<s></s><pad><unk><0x41>",
        "",
    ],
)
def test_round_trip_is_exact_on_whitespace_and_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_indentation_and_newlines_are_single_pieces(tokenizer):
    assert [tokenizer.id_to_piece(i) for i in tokenizer.encode("\n")] == ["\n"]
    assert len(tokenizer.encode("    ")) == 1
    assert len(tokenizer.encode("        ")) == 1


def test_vocab_size_special_ids_and_checksum(tokenizer, tmp_path):
    assert tokenizer.vocab_size == VOCAB
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2, 3)
    path = tokenizer.save(tmp_path)
    assert tokenizer.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert SentencePieceTokenizer.load(tmp_path).checksum == tokenizer.checksum
    assert SentencePieceTokenizer.load(path).encode("def f(): pass") == tokenizer.encode("def f(): pass")


def test_training_is_deterministic(stdlib_texts, tokenizer):
    again = train_bpe(spt.training_lines(stdlib_texts, 300_000), VOCAB)
    assert again.checksum == tokenizer.checksum


def test_training_lines_respect_the_byte_budget():
    lines = list(spt.training_lines(["ab\n\ncd\n", "é" * 10], 7))
    assert lines == ["ab", "cd"]


def test_encode_batch_matches_encode(tokenizer, stdlib_texts):
    texts = stdlib_texts[:5]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]


def test_load_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        SentencePieceTokenizer.load(tmp_path / "nope.model")
    with pytest.raises(UserError, match="spm.model"):
        SentencePieceTokenizer.load(tmp_path)


def test_too_small_vocab_is_a_user_error(stdlib_texts):
    with pytest.raises(UserError, match="model.vocab_size"):
        train_bpe(spt.training_lines(stdlib_texts, 100_000), 50)


def test_load_or_train_trains_once_then_reuses(tmp_path, stdlib_texts):
    directory = tmp_path / "tokenizer"
    texts = lambda: stdlib_texts  # noqa: E731
    first = load_or_train("", directory, VOCAB, texts, 200_000)
    assert (directory / "spm.model").is_file() and (directory / "manifest.json").is_file()

    def no_training():
        raise AssertionError("should have reused the trained tokenizer")

    assert load_or_train("", directory, VOCAB, no_training, 200_000).checksum == first.checksum
    with pytest.raises(UserError, match="model.vocab_size=512"):
        load_or_train("", directory, 512, no_training, 200_000)


def test_load_or_train_does_not_write_when_told(tmp_path, stdlib_texts):
    load_or_train("", tmp_path / "tok", VOCAB, lambda: stdlib_texts, 100_000, write=False)
    assert not (tmp_path / "tok").exists()


def test_given_tokenizer_may_be_smaller_but_not_larger(tmp_path, tokenizer):
    path = tokenizer.save(tmp_path)
    never = lambda: []  # noqa: E731
    assert load_or_train(str(path), tmp_path / "x", 1000, never, 0).checksum == tokenizer.checksum
    with pytest.raises(UserError, match="more than model.vocab_size"):
        load_or_train(str(path), tmp_path / "x", VOCAB - 1, never, 0)


# --- any text round-trips (property) ----------------------------------------------------------

# Every Unicode string UTF-8 can hold: all code points but the surrogates.
ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=200)


@settings(max_examples=400, deadline=None)
@given(text=ANY_TEXT)
def test_decode_encode_is_the_identity_on_any_text(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < VOCAB for i in ids) and tokenizer.unk_id not in ids


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(ANY_TEXT, max_size=6))
def test_encode_batch_is_encode_of_each_text(tokenizer, texts):
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]


def test_literal_space_symbols_become_byte_pieces(tokenizer):
    pieces = [tokenizer.id_to_piece(i) for i in tokenizer.encode("a\u2581b")]
    assert pieces == ["a", "<0xE2>", "<0x96>", "<0x81>", "b"]


# --- truncation, padding, masks (shared by every tokenizer) ------------------------------------

PADDING = st.sampled_from(["longest", "max_length", True, None])
SIDE = st.sampled_from(["left", "right"])


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(ANY_TEXT, min_size=1, max_size=5),
    max_length=st.integers(0, 40),
    padding=PADDING,
    padding_side=SIDE,
    truncation_side=SIDE,
)
def test_padding_and_truncation_invariants(
    tokenizer, texts, max_length, padding, padding_side, truncation_side
):
    full = [tokenizer.encode(t) for t in texts]
    kept = [truncate(ids, max_length, truncation_side) for ids in full]
    out = tokenizer.encode_batch(
        texts,
        max_length=max_length,
        padding=padding,
        truncation=True,
        padding_side=padding_side,
        truncation_side=truncation_side,
    )
    for ids, k in zip(full, kept, strict=True):  # truncation keeps the head or the tail
        assert len(k) == min(len(ids), max_length)
        assert k == (ids[:max_length] if truncation_side == "right" else ids[len(ids) - len(k) :])
    if padding is None:
        assert out == kept
        return
    assert isinstance(out, Batch)
    length = max_length if padding == "max_length" else max(map(len, kept))
    assert out.input_ids.shape == out.attention_mask.shape == (len(texts), length)
    assert out.input_ids.dtype == out.attention_mask.dtype == np.int32
    np.testing.assert_array_equal(out.attention_mask.sum(1), [len(k) for k in kept])
    for row, mask, k in zip(out.input_ids, out.attention_mask, kept, strict=True):
        real = np.flatnonzero(mask)
        if len(k):  # the real tokens are one run, at the start (right padding) or the end (left)
            assert real[-1] - real[0] + 1 == len(k)
            assert real[0] == 0 if padding_side == "right" else real[-1] == length - 1
        assert row[mask == 1].tolist() == k
        assert (row[mask == 0] == tokenizer.pad_id).all()
        assert tokenizer.decode(row) == tokenizer.decode(k)  # padding decodes to nothing


def test_padding_errors_and_aliases(tokenizer):
    with pytest.raises(ValueError, match="need max_length"):
        tokenizer.encode_batch(["x"], padding="max_length")
    with pytest.raises(ValueError, match="need max_length"):
        tokenizer.encode_batch(["x"], truncation=True)
    with pytest.raises(ValueError, match="more than max_length=1; pass truncation=True"):
        tokenizer.encode_batch(["abc def"], max_length=1, padding="max_length")
    with pytest.raises(ValueError, match="padding must be one of"):
        tokenizer.encode_batch(["x"], padding="middle")
    with pytest.raises(ValueError, match="padding_side"):
        tokenizer.encode_batch(["x"], padding=True, padding_side="up")
    batch = tokenizer.encode_batch(["x", "def"], padding=True)
    assert batch["input_ids"] is batch.input_ids and batch.input_ids.shape[0] == 2
    empty = tokenizer.encode_batch([], padding="longest")
    assert empty.input_ids.shape == (0, 0)


def test_pad_and_truncate_helpers():
    b = pad([[5, 6], [7]], 3, pad_id=0, side="left")
    np.testing.assert_array_equal(b.input_ids, [[0, 5, 6], [0, 0, 7]])
    np.testing.assert_array_equal(b.attention_mask, [[0, 1, 1], [0, 0, 1]])
    assert truncate([1, 2, 3], 2) == [1, 2] and truncate([1, 2, 3], 2, "left") == [2, 3]
    with pytest.raises(ValueError, match="more than the padded length"):
        pad([[1, 2]], 1, 0)


def test_decode_keeps_special_tokens_when_asked(tokenizer):
    ids = [tokenizer.bos_id, *tokenizer.encode("x = 1"), tokenizer.eos_id, tokenizer.pad_id]
    assert tokenizer.decode(ids) == "x = 1"
    assert tokenizer.decode(np.asarray(ids)) == "x = 1"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<s>x = 1</s><pad>"
    assert tokenizer.special_ids == {"pad": 3, "unk": 0, "bos": 1, "eos": 2}
    assert tokenizer.padding_id == 3 and tokenizer.model_type == "bpe"


def test_hugging_face_tokenizer_shares_the_interface(tokenizer, tmp_path):
    """The same model exported to a transformers folder pads, masks and decodes identically."""
    from codex_jax.tokenizers import HFTokenizer, load_tokenizer
    from codex_jax.tokenizers.hf import save_sentencepiece_as_hf

    hf = load_tokenizer(save_sentencepiece_as_hf(tokenizer.save(tmp_path / "spm"), tmp_path / "hf"))
    assert isinstance(hf, HFTokenizer) and hf.special_ids == tokenizer.special_ids
    texts = ["def f(x):\n    return x", "y", ""]
    for kwargs in (
        {},
        {"padding": "longest", "padding_side": "left"},
        {"padding": "max_length", "max_length": 4, "truncation": True},
    ):
        ours, theirs = tokenizer.encode_batch(texts, **kwargs), hf.encode_batch(texts, **kwargs)
        if isinstance(ours, Batch):
            np.testing.assert_array_equal(ours.input_ids, theirs.input_ids)
            np.testing.assert_array_equal(ours.attention_mask, theirs.attention_mask)
        else:
            assert ours == theirs
    ids = [tokenizer.bos_id, *tokenizer.encode(texts[0]), tokenizer.eos_id]
    assert hf.decode(ids) == tokenizer.decode(ids) == texts[0]
    assert "</s>" in hf.decode(ids, skip_special_tokens=False)


# --- training options ----------------------------------------------------------------------


def test_unigram_training_is_lossless_and_deterministic(stdlib_texts):
    lines = list(spt.training_lines(stdlib_texts, 60_000))
    first = train_model(lines, 400, "unigram", seed=3)
    assert first.checksum == train_model(lines, 400, "unigram", seed=3).checksum
    assert first.model_type == "unigram" and first.vocab_size == 400
    text = "def g(a, b):\n\treturn a ** b  # \u2581 \u00e9\r\n"
    assert first.decode(first.encode(text)) == text


def test_training_errors_are_one_clear_line(stdlib_texts):
    with pytest.raises(UserError, match="no training text"):
        train_model(iter([]), 300)
    with pytest.raises(UserError, match=r"at most \d+ pieces, fewer than --vocab-size=5000"):
        train_model(["abc abd"] * 20, 5000, vocab_flag="--vocab-size")
    with pytest.raises(UserError, match="model type must be one of bpe, unigram"):
        train_model(["x"], 300, "word")
