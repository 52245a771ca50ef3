"""``codex-jax tokenizer train|encode|decode|inspect|export``: tokenizers from the command line.

    codex-jax tokenizer train --input 'src/**/*.py' --vocab-size 4096 --out tok/
    codex-jax tokenizer encode --tokenizer tok/ --text 'def f(): pass'   # {"ids": [...], ...}
    codex-jax tokenizer decode --tokenizer tok/ --ids '[12, 7]'          # the text, exactly
    codex-jax tokenizer inspect --tokenizer tok/                         # sizes, special ids
    codex-jax tokenizer export --tokenizer tok/ --out hf/                # a transformers folder

Results go to stdout (JSON, except ``decode``'s text); a problem is one line ``error: ...`` on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from codex_jax.errors import EXIT_USER_ERROR, UserError
from codex_jax.files import as_path
from codex_jax.tokenizers import HFTokenizer, SentencePieceTokenizer, load_tokenizer
from codex_jax.tokenizers.hf import save_sentencepiece_as_hf
from codex_jax.tokenizers.sentencepiece import MODEL_FILENAME
from codex_jax.tokenizers.train import train_from_inputs


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UserErrors (one line, exit 2)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The ``tokenizer`` command line and its five subcommands."""
    parser = _Parser(prog="codex-jax tokenizer", description="Train, use and export tokenizers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = sub.add_parser("train", help="train a SentencePiece model on text files")
    train.add_argument(
        "--input",
        nargs="+",
        action="extend",
        required=True,
        metavar="SOURCE",
        help="globs, 'stdlib', 'jsonl:PATH:FIELD' or 'csv:PATH:COLUMN' (repeatable)",
    )
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    train.add_argument("--out", required=True, help="folder for spm.model and manifest.json")
    train.add_argument(
        "--max-sentences",
        type=int,
        default=0,
        help="train on a seeded sample of this many lines (0: all)",
    )
    train.add_argument("--seed", type=int, default=0)
    for name, help_text in (
        ("encode", "text to token ids (JSON)"),
        ("decode", "token ids to text"),
        ("inspect", "vocabulary size, special ids, sample pieces (JSON)"),
        ("export", "write a Hugging Face tokenizer folder"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--tokenizer",
            "--model",
            required=True,
            dest="tokenizer",
            help="a SentencePiece model (file or folder) or a Hugging Face folder",
        )
    encode, decode, inspect, export = (sub.choices[n] for n in ("encode", "decode", "inspect", "export"))
    what = encode.add_mutually_exclusive_group()
    what.add_argument("--text", help="the text (default: stdin)")
    what.add_argument("--file", help="a UTF-8 file to encode, exactly as it is")
    encode.add_argument("--pieces", action="store_true", help="also list the pieces")
    ids = decode.add_mutually_exclusive_group()
    ids.add_argument("--ids", help="a JSON list of ids, or encode's output (default: stdin)")
    ids.add_argument("--file", help="a file holding such JSON")
    decode.add_argument(
        "--keep-special",
        action="store_true",
        help="write special tokens ('</s>') instead of dropping them",
    )
    decode.add_argument("--json", action="store_true", help='print {"text": ...} instead')
    inspect.add_argument("--sample", type=int, default=20, help="pieces to show")
    export.add_argument("--out", required=True, help="an empty or new folder")
    return parser


def _read_text(args) -> str:
    if args.text is not None:
        return args.text
    data = as_path(args.file).read_bytes() if args.file else sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = args.file or "stdin"
        raise UserError(f"{where} is not UTF-8 text (bad byte at offset {e.start})") from None


def _read_ids(args, vocab_size: int) -> list[int]:
    if args.ids is not None:
        text, where = args.ids, "--ids"
    else:
        text = as_path(args.file).read_text() if args.file else sys.stdin.read()
        where = args.file or "stdin"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not JSON ({e.msg})") from None
    if isinstance(value, dict):
        value = value.get("ids")
    ok = isinstance(value, list) and all(type(i) is int for i in value)
    if not ok:
        raise UserError(f'{where}: expected a JSON list of integer ids (or {{"ids": [...]}})')
    bad = [i for i in value if not 0 <= i < vocab_size]
    if bad:
        raise UserError(f"{where}: id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return value


def _load(path: str):
    if not as_path(path).exists():
        raise UserError(f"tokenizer not found: {path}")
    return load_tokenizer(path)


def cmd_train(args) -> dict:
    if args.vocab_size < 1:
        raise UserError(f"--vocab-size must be > 0, got {args.vocab_size}")
    tok, manifest = train_from_inputs(
        args.input, args.out, args.vocab_size, args.model_type, args.max_sentences, args.seed
    )
    files = sum(len(i["files"]) for i in manifest["inputs"])
    return {
        "out": str(args.out),
        "model": str(as_path(args.out) / "spm.model"),
        "sha256": tok.checksum,
        "vocab_size": tok.vocab_size,
        "model_type": args.model_type,
        "files": files,
        "sentences": manifest["sentences"],
    }


def cmd_encode(args) -> dict:
    tok = _load(args.tokenizer)
    ids = tok.encode(_read_text(args))
    out = {"ids": ids, "num_tokens": len(ids)}
    if args.pieces:
        out["pieces"] = [tok.id_to_piece(i) for i in ids]
    return out


def cmd_decode(args) -> dict | None:
    tok = _load(args.tokenizer)
    text = tok.decode(_read_ids(args, tok.vocab_size), skip_special_tokens=not args.keep_special)
    if args.json:
        return {"text": text}
    sys.stdout.buffer.write(text.encode("utf-8", errors="replace"))
    sys.stdout.flush()
    return None


def cmd_inspect(args) -> dict:
    tok = _load(args.tokenizer)
    specials = tok.special_ids
    count = max(0, min(args.sample, tok.vocab_size))
    sample = sorted({int(i) for i in np.linspace(0, tok.vocab_size - 1, count).round()})
    out = {
        "path": args.tokenizer,
        "kind": "sentencepiece" if isinstance(tok, SentencePieceTokenizer) else "huggingface",
        "vocab_size": tok.vocab_size,
        "special_ids": specials,
        "special_pieces": {k: tok.id_to_piece(v) if v >= 0 else None for k, v in specials.items()},
        "checksum": tok.checksum,
        "sample_pieces": [[i, tok.id_to_piece(i)] for i in sample],
    }
    if isinstance(tok, SentencePieceTokenizer):
        out["model_type"] = tok.model_type
    return out


def cmd_export(args) -> dict:
    tok = _load(args.tokenizer)
    out = as_path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder")
    if isinstance(tok, HFTokenizer):
        tok.save(out)
    else:
        assert isinstance(tok, SentencePieceTokenizer)
        source = as_path(args.tokenizer)
        save_sentencepiece_as_hf(source / MODEL_FILENAME if source.is_dir() else source, out)
    return {"out": str(out), "files": sorted(p.name for p in out.iterdir())}


COMMANDS = {
    "train": cmd_train,
    "encode": cmd_encode,
    "decode": cmd_decode,
    "inspect": cmd_inspect,
    "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand on ``argv`` (without the program name); returns the exit code."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        result = COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}".lstrip(": "), file=sys.stderr)
        return EXIT_USER_ERROR
    if result is not None:
        print(json.dumps(result, ensure_ascii=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
