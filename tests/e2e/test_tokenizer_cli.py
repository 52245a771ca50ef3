"""``codex-jax tokenizer ...`` run for real: ``python -m codex_jax.cli`` in a process of its own."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_python

from codex_jax.corpus.globbing import stdlib_root

REPO = Path(__file__).resolve().parents[2]
TRICKY = "def f(x):\r\n\treturn  x \u2581 '\u00e9\u20ac\U0001f600'\x00\x7f\n\n  \n"


def cli(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """``python -m codex_jax.cli tokenizer ARGS``: a real process (forked from the test's zygote)."""
    return run_python(["-m", "codex_jax.cli", "tokenizer", *args], input=stdin, timeout=180, text=False)


def ok(proc) -> str:
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc.stdout.decode()


def one_error_line(proc, pattern: str) -> None:
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == b"", proc.stderr.decode()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """20 small stdlib modules, a JSONL file and an empty file."""
    root = tmp_path_factory.mktemp("corpus")
    small = [p for p in sorted(stdlib_root().glob("*.py")) if 2_000 < p.stat().st_size < 20_000]
    for path in small[:20]:
        shutil.copy(path, root / path.name)
    (root / "empty.py").write_text("")
    (root / "docs.jsonl").write_text(json.dumps({"text": "x = 1\ny = 2"}) + "\nnot json\n")
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "bpe"
    summary = json.loads(
        ok(
            cli(
                "train",
                "--input",
                f"{corpus}/*.py",
                f"jsonl:{corpus}/docs.jsonl:text",
                "--vocab-size",
                400,
                "--out",
                out,
            )
        )
    )
    return out, summary


def test_train_writes_the_model_and_a_manifest_of_its_inputs(trained, corpus):
    out, summary = trained
    model = (out / "spm.model").read_bytes()
    assert summary["sha256"] == hashlib.sha256(model).hexdigest() and summary["vocab_size"] == 400
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sha256"] == summary["sha256"] and manifest["model_type"] == "bpe"
    assert manifest["options"]["vocab_size"] == 400 and manifest["seed"] == 0
    files = {f["path"]: f for i in manifest["inputs"] for f in i["files"]}
    assert len(files) == 22 == summary["files"]
    for path, entry in files.items():
        assert entry["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert files[str(corpus / "docs.jsonl")]["skipped"] == 1
    assert files[str(corpus / "empty.py")]["records"] == 0


def test_training_is_deterministic_and_samples_by_seed(trained, corpus, tmp_path):
    out, summary = trained
    again = json.loads(
        ok(
            cli(
                "train",
                "--input",
                f"{corpus}/*.py",
                f"jsonl:{corpus}/docs.jsonl:text",
                "--vocab-size",
                400,
                "--out",
                tmp_path / "again",
            )
        )
    )
    assert again["sha256"] == summary["sha256"]

    def sampled(seed, name):
        return json.loads(
            ok(
                cli(
                    "train",
                    "--input",
                    f"{corpus}/*.py",
                    "--vocab-size",
                    400,
                    "--max-sentences",
                    1500,
                    "--seed",
                    seed,
                    "--out",
                    tmp_path / name,
                )
            )
        )

    a, b, c = sampled(1, "a"), sampled(1, "b"), sampled(2, "c")
    assert a["sentences"] == 1500 and a["sha256"] == b["sha256"] != c["sha256"]


def test_unigram_model(corpus, tmp_path):
    summary = json.loads(
        ok(
            cli(
                "train",
                "--input",
                f"{corpus}/*.py",
                "--vocab-size",
                400,
                "--model-type",
                "unigram",
                "--max-sentences",
                2000,
                "--out",
                tmp_path / "uni",
            )
        )
    )
    assert summary["model_type"] == "unigram"
    info = json.loads(ok(cli("inspect", "--tokenizer", tmp_path / "uni")))
    assert info["model_type"] == "unigram" and info["vocab_size"] == 400


def test_encode_decode_round_trip_exactly(trained, tmp_path):
    out, _ = trained
    text_file = tmp_path / "in.txt"
    text_file.write_bytes(TRICKY.encode())
    encoded = json.loads(ok(cli("encode", "--tokenizer", out, "--file", text_file, "--pieces")))
    assert encoded["num_tokens"] == len(encoded["ids"]) == len(encoded["pieces"])
    assert "\u2581\u2581" in encoded["pieces"] or "\u2581" in encoded["pieces"]
    ids = json.dumps(encoded["ids"])
    assert ok(cli("decode", "--tokenizer", out, "--ids", ids)).encode() == TRICKY.encode()
    piped = cli("decode", "--tokenizer", out, stdin=json.dumps(encoded).encode())
    assert piped.returncode == 0 and piped.stdout == TRICKY.encode()
    from_text = json.loads(ok(cli("encode", "--model", out / "spm.model", "--text", "x = 1")))
    as_json = json.loads(
        ok(
            cli(
                "decode",
                "--tokenizer",
                out,
                "--json",
                "--ids",
                json.dumps([1, *from_text["ids"], 2]),
            )
        )
    )
    assert as_json == {"text": "x = 1"}
    kept = ok(
        cli(
            "decode",
            "--tokenizer",
            out,
            "--keep-special",
            "--ids",
            json.dumps([1, *from_text["ids"], 2]),
        )
    )
    assert kept == "<s>x = 1</s>"


def test_inspect_reports_sizes_and_special_ids(trained):
    out, summary = trained
    info = json.loads(ok(cli("inspect", "--tokenizer", out, "--sample", 5)))
    assert info["kind"] == "sentencepiece" and info["vocab_size"] == 400
    assert info["special_ids"] == {"pad": 3, "unk": 0, "bos": 1, "eos": 2}
    assert info["special_pieces"]["eos"] == "</s>" and info["checksum"] == summary["sha256"]
    assert len(info["sample_pieces"]) == 5 and info["sample_pieces"][0] == [0, "<unk>"]


def test_export_writes_a_transformers_folder_that_encodes_the_same(trained, tmp_path, capsys):
    out, _ = trained
    hf = tmp_path / "hf"
    result = json.loads(ok(cli("export", "--tokenizer", out, "--out", hf)))
    assert {"tokenizer.json", "tokenizer.model"} <= set(result["files"])
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(hf, local_files_only=True)
    code = "def f(x):\n    return x + 1\n"
    ids = json.loads(ok(cli("encode", "--tokenizer", out, "--text", code)))["ids"]
    assert tok.encode(code, add_special_tokens=False) == ids
    assert tok.decode(ids) == code
    from codex_jax.tokenizers.cli import main  # in process: transformers is imported already

    assert main(["inspect", "--tokenizer", str(hf)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "huggingface" and info["special_ids"]["eos"] == 2
    one_error_line(cli("export", "--tokenizer", out, "--out", hf), "is not an empty folder")


def test_errors_are_one_line_and_exit_2(trained, corpus, tmp_path):
    out, _ = trained
    (tmp_path / "blank.txt").write_text("\n\n")
    one_error_line(
        cli(
            "train",
            "--input",
            tmp_path / "missing/*.py",
            "--vocab-size",
            300,
            "--out",
            tmp_path / "x",
        ),
        "no files match",
    )
    one_error_line(
        cli("train", "--input", tmp_path / "nope.txt", "--vocab-size", 300, "--out", tmp_path / "x"),
        "file not found",
    )
    one_error_line(
        cli("train", "--input", tmp_path / "blank.txt", "--vocab-size", 300, "--out", tmp_path / "x"),
        "no training text",
    )
    one_error_line(
        cli("train", "--input", corpus / "docs.jsonl", "--vocab-size", 5000, "--out", tmp_path / "x"),
        "fewer than --vocab-size=5000",
    )
    one_error_line(
        cli(
            "train",
            "--input",
            f"{corpus}/*.py",
            "--vocab-size",
            300,
            "--model-type",
            "word",
            "--out",
            tmp_path / "x",
        ),
        "invalid choice",
    )
    one_error_line(cli("train", "--input", f"{corpus}/*.py", "--out", tmp_path / "x"), "--vocab-size")
    one_error_line(cli("encode", "--tokenizer", tmp_path / "none", "--text", "x"), "tokenizer not found")
    one_error_line(
        cli("decode", "--tokenizer", out, "--ids", "[1, 99999]"),
        "id 99999 is outside the vocabulary [0, 400)",
    )
    one_error_line(cli("decode", "--tokenizer", out, "--ids", "[1,"), "not JSON")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    one_error_line(cli("encode", "--tokenizer", out, "--file", tmp_path / "latin1.txt"), "is not UTF-8 text")
    assert not (tmp_path / "x").exists()
