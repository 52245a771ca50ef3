"""A Hugging Face tokenizer folder behind the shared :class:`~codex_jax.tokenizers.base.Tokenizer`
interface.

    tok = HFTokenizer.load("hf_folder")  # tokenizer.json and/or tokenizer.model (+ configs)
    ids = tok.encode("def f(x):")        # no BOS/EOS added: documents are packed with EOS

Loaded with ``transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)``: nothing
is downloaded and nothing is unpickled. ``checksum`` is the sha256 over the folder's tokenizer
files, so the token cache is rebuilt when any of them changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from codex_jax.errors import UserError
from codex_jax.files import as_path, copy_file, copytree, is_remote, local_copy
from codex_jax.tokenizers.base import Tokenizer

# The files that make a tokenizer (in the order they are hashed); the first two define it.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def is_hf_tokenizer_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding ``tokenizer.json`` or ``tokenizer.model``."""
    path = as_path(path)
    return path.is_dir() and any((path / n).is_file() for n in TOKENIZER_FILES[:2])


def tokenizer_files(folder: str | os.PathLike) -> list[Path]:
    """The tokenizer files present in ``folder`` (see :data:`TOKENIZER_FILES`)."""
    folder = as_path(folder)
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]


def _id(value) -> int:
    return -1 if value is None else int(value)


class HFTokenizer(Tokenizer):
    """Text <-> token ids with a ``transformers`` tokenizer loaded from a local folder."""

    def __init__(self, tokenizer, folder: Path, checksum: str):
        self._tok = tokenizer
        self.folder = folder
        self._checksum = checksum

    @classmethod
    def load(cls, folder: str | os.PathLike) -> HFTokenizer:
        """Loads ``folder``; UserError when it has no tokenizer files or transformers fails."""
        folder = as_path(folder)
        if not is_hf_tokenizer_folder(folder):
            raise UserError(
                f"{folder}: no tokenizer.json or tokenizer.model; expected a Hugging Face tokenizer folder"
            )
        digest = hashlib.sha256()
        local = folder  # transformers reads a local folder: a gs:// one is copied (files.local_copy)
        for file in tokenizer_files(folder):
            data = file.read_bytes()
            digest.update(f"{file.name}\0{len(data)}\0".encode())
            digest.update(data)
            local = local_copy(file).parent
        from transformers import AutoTokenizer  # slow import: only when a folder is used

        try:
            tok = AutoTokenizer.from_pretrained(str(local), local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError, ImportError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{folder}: transformers cannot load the tokenizer ({first})") from None
        return cls(tok, folder, digest.hexdigest())

    @property
    def hf(self):
        """The wrapped ``transformers`` tokenizer (chat templates, offsets)."""
        return self._tok

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """Copies the tokenizer files into ``directory``; returns the copies."""
        out = as_path(directory)
        copies = [out / f.name for f in tokenizer_files(self.folder)]
        for f, copy in zip(tokenizer_files(self.folder), copies, strict=True):
            copy_file(f, copy)
        return copies

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""
        return self._tok.encode(text, add_special_tokens=False, verbose=False)

    def _encode_many(self, texts: list[str], num_threads: int) -> list[list[int]]:
        # The Rust backend batches with its own thread pool; num_threads is not used.
        out = self._tok(texts, add_special_tokens=False, verbose=False, return_attention_mask=False)
        return out["input_ids"]

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_piece(self, token_id: int) -> str:
        """The token string of one id (for debugging and tests)."""
        return self._tok.convert_ids_to_tokens(int(token_id))

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (ids are in ``[0, vocab_size)``)."""
        return len(self._tok)

    @property
    def eos_id(self) -> int:
        """End-of-document id (-1 when the tokenizer has none)."""
        return _id(self._tok.eos_token_id)

    @property
    def bos_id(self) -> int:
        """Beginning-of-document id (-1 when none)."""
        return _id(self._tok.bos_token_id)

    @property
    def pad_id(self) -> int:
        """Padding id (-1 when none)."""
        return _id(self._tok.pad_token_id)

    @property
    def unk_id(self) -> int:
        """Unknown-token id (-1 when none, as in byte-level BPE)."""
        return _id(self._tok.unk_token_id)

    @property
    def checksum(self) -> str:
        """sha256 over the names and bytes of the folder's tokenizer files."""
        return self._checksum


def save_sentencepiece_as_hf(spm_model: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Writes a SentencePiece model as a transformers tokenizer folder; returns the folder.

    ``tokenizer.model`` is the model itself; ``tokenizer.json`` + ``tokenizer_config.json`` are
    transformers' ``LlamaTokenizer`` conversion with no added prefix space and no BOS, which
    encodes exactly as SentencePiece does with the options of ``tokenizers/sentencepiece.py``.
    """
    from transformers import LlamaTokenizer

    if is_remote(directory) or is_remote(spm_model):  # transformers writes a local folder: copy it over
        with tempfile.TemporaryDirectory() as tmp:
            save_sentencepiece_as_hf(local_copy(as_path(spm_model)), tmp)
            copytree(Path(tmp), as_path(directory))
        return as_path(directory)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spm_model, out / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(
        str(out),
        local_files_only=True,
        legacy=False,
        add_prefix_space=False,
        add_bos_token=False,
        add_eos_token=False,
    )
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    if sp.pad_id() >= 0:
        tok.pad_token = sp.id_to_piece(sp.pad_id())
    tok.save_pretrained(str(out))
    return out
