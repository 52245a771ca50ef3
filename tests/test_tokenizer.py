"""The SentencePiece tokenizer: lossless on real code, deterministic, exact vocab, reuse rules."""

import hashlib

import pytest

from codex_jax.data.sources import read_source
from codex_jax.errors import UserError
from codex_jax.tokenizers import sentencepiece as spt
from codex_jax.tokenizers.sentencepiece import SentencePieceTokenizer, load_or_train, train_bpe

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
    assert SentencePieceTokenizer.load(path).encode("def f(): pass") == tokenizer.encode(
        "def f(): pass"
    )


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
