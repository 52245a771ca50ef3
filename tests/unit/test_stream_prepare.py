"""prepare_data streams a file source: the same manifest, tokenizer and cache bytes as the corpus read
into memory, a Python heap that does not grow with the corpus, and hosts that build shares of one cache."""

import json
import random
import shutil
import sys
import threading
import tracemalloc

import numpy as np
import pytest
from gcs_emulator import gcs  # noqa: F401 (the fixture, for the bucket case)

from codex_jax import files
from codex_jax.config.schema import default_config
from codex_jax.corpus.globbing import stdlib_root
from codex_jax.corpus.scan import HashSample
from codex_jax.corpus.splits import read_manifest
from codex_jax.data import cache, cache_build, pipeline, streaming
from codex_jax.data.pipeline import prepare_data
from codex_jax.tokenizers.train import load_or_train

BLOCK_POLICY = "extends: default\nrules:\n  - id: no-ghp\n    action: block\n    literal: ghp_\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Small real stdlib modules in a tree (one with a blocked secret, one undecodable, one blank), an
    eval source holding three of them, and JSONL files with bad and blocked records."""
    root = tmp_path_factory.mktemp("corpus")
    small = [p for p in sorted(stdlib_root().glob("*.py")) if 500 < p.stat().st_size < 12_000]
    for i, path in enumerate(small[:24]):
        target = root / "code" / ("pkg" if i % 3 else "") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (root / "code" / "pkg" / "token.py").write_text('T = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"\n')
    (root / "code" / "bad.py").write_bytes(b"x = 1\n\xff\n")
    (root / "code" / "blank.py").write_text("  \n")
    (root / "held").mkdir()
    for path in sorted((root / "code" / "pkg").glob("*.py"))[:3]:
        shutil.copy(path, root / "held" / path.name)
    rng = random.Random(0)
    (root / "jl").mkdir()
    for part in range(3):
        lines = [
            json.dumps({"text": f"def f{part}_{i}(x):\n    return x * {rng.randint(0, 99)}\n"})
            for i in range(40)
        ]
        lines[3] = "{bad json"
        lines[8] = json.dumps({"text": "key = 'ghp_abcdefghijklmnopqrstuvwxyz0123456789'\n"})
        (root / "jl" / f"p{part}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "block.yaml").write_text(BLOCK_POLICY)
    return root


def _config(corpus, **data):
    cfg = default_config()
    cfg.data.seq_len, cfg.data.batch_size, cfg.data.eval_fraction = 16, 4, 0.2
    cfg.data.tokenizer_train_bytes = 40_000  # less than the corpus: the sample is a hash-ordered part
    cfg.data.safety_policy = str(corpus / "block.yaml")
    cfg.model.vocab_size = 512
    cfg.logging.progress = False
    for key, value in data.items():
        cfg.data[key] = value
    return cfg


def _read_lines(err):
    """The lines of a log that reading the corpus prints (its timing left out)."""
    lines = [
        line for line in err.splitlines() if not line.startswith(("tokenizer:", "data: build", "data: tok"))
    ]
    return [line.split(", read in")[0] for line in lines]


def _in_memory(cfg, tmp_path):
    """What the corpus read into memory gives (the path mixtures take): manifest, tokenizer, streams."""
    train, held_out, manifest = pipeline._read_and_split(cfg.data)
    texts = pipeline._tokenizer_texts(train)()
    tok = load_or_train(
        "", tmp_path / "tok", cfg.model.vocab_size, lambda: texts, cfg.data.tokenizer_train_bytes, False
    )
    held_out = sorted(held_out, key=lambda d: pipeline.hash_fraction("eval-order:" + d.key))
    streams = {
        "train": cache.pack(tok, [d.text for d in train], progress=False),
        "eval": cache.pack(tok, [d.text for d in held_out], progress=False),
    }
    return manifest, tok, streams


@pytest.mark.parametrize(
    "case",
    [
        {"source": "{root}/code/**/*.py"},
        {"source": "{root}/code/**/*.py", "eval_source": "{root}/held/*.py"},  # 3 files of the source too
        {"source": "{root}/code/**/*.py", "eval_fraction": 0.0, "max_files": 9, "exclude": "blank.py"},
        {"source": "jsonl:{root}/jl/*.jsonl:text", "eval_fraction": 0.3},
        {
            "source": "jsonl:{root}/jl/*.jsonl:text",
            "eval_fraction": 1.0,
            "vocab": 300,
            "seq_len": 4,
        },  # one moves back
    ],
    ids=["glob", "eval_source", "max_files", "jsonl", "all_held_out"],
)
def test_streaming_gives_the_in_memory_manifest_tokenizer_and_cache(corpus, tmp_path, case, capsys):
    case = dict(case)
    vocab = case.pop("vocab", 512)
    cfg = _config(corpus, **{k: v.format(root=corpus) if isinstance(v, str) else v for k, v in case.items()})
    cfg.model.vocab_size = vocab
    assert streaming.is_streamed(cfg.data)
    bundle = prepare_data(cfg, tmp_path / "work", write=True)
    streamed_log = _read_lines(capsys.readouterr().err)
    manifest, tok, streams = _in_memory(cfg, tmp_path)
    assert streamed_log == _read_lines(capsys.readouterr().err)  # the same warnings and counts
    path = tmp_path / "work" / pipeline.MANIFEST_FILENAME
    written = json.loads(path.read_text())
    lazily = read_manifest(path)  # what the corpus-change note reads: the rows one line at a time
    assert lazily is not None and not isinstance(lazily["files"], list)
    assert {**lazily, "files": list(lazily["files"])} == written
    for key in ("tokenizer", "seq_len", "tokens", "windows"):
        written.pop(key)
    assert written == json.loads(json.dumps(manifest))  # rows, totals, safety counts, checksum
    assert manifest["totals"]["skipped"] > manifest["totals"]["files"] // 100  # bad and blocked records
    assert bundle.manifest["checksum"] == manifest["checksum"]
    assert list(bundle.manifest["files"]) == manifest["files"]
    assert bundle.tokenizer.checksum == tok.checksum
    for split, expected in streams.items():
        np.testing.assert_array_equal(
            np.fromfile(tmp_path / "work" / "cache" / f"{split}.tokens", np.uint16), expected
        )


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_two_hosts_build_shares_of_one_cache(corpus, tmp_path, monkeypatch, request, where):
    """Two hosts (threads here, with a real barrier) each tokenize every other task; host 0 combines the
    shares: the bytes of a one-process build. ``local``: into a shared build folder; ``bucket``: the
    shares meet in the build folder of a cache on a bucket (a real Cloud Storage emulator)."""
    cfg = _config(corpus, source=f"{corpus}/code/**/*.py")
    one = prepare_data(cfg, tmp_path / "one", write=True)
    expected = {s: (tmp_path / "one" / "cache" / f"{s}.tokens").read_bytes() for s in ("train", "eval")}
    work = tmp_path / "two"
    if where == "bucket":
        work = files.as_path(f"gs://{request.getfixturevalue('gcs').bucket}/two-hosts")
    barrier, names, results, errors = threading.Barrier(2, timeout=120), [], {}, []

    def host(index):
        def wait(name):
            names.append((index, name))
            barrier.wait()

        source = streaming.scan_source(cfg.data, pipeline.data_settings(cfg.data))
        tok = one.tokenizer
        key = cache.cache_key(source.corpus.manifest["checksum"], tok)
        hosts = streaming.Hosts(index, 2, wait)
        try:
            results[index] = streaming.load_or_build(
                work / "cache", key, tok, source, index == 0, hosts, False, 1
            )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    monkeypatch.setattr(streaming, "TASK_BYTES", 12_000)  # tasks of a few files: each host has several
    threads = [threading.Thread(target=host, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(names) == [
        (i, n) for i in range(2) for n in ("codex_jax:token_cache", "codex_jax:token_cache_shares")
    ]
    for split, data in expected.items():
        assert (work / "cache" / f"{split}.tokens").read_bytes() == data
        for index in range(2):
            assert np.asarray(results[index][split]).tobytes() == data
    assert not [p for p in (work / "cache").iterdir() if p.name.startswith("build-")]
    assert (work / "cache" / "files.jsonl").read_text() == (tmp_path / "one/cache/files.jsonl").read_text()


def test_a_corpus_of_10000_files_is_prepared_in_bounded_python_memory(tmp_path, monkeypatch):
    """The scan, the tokenizer's sample and the cache build never hold the corpus's texts, tokens or file
    list: the Python heap's peak stays far below the corpus size."""
    root = tmp_path / "many"
    rng = random.Random(0)
    for i in range(10_000):
        folder = root / f"d{i % 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        body = "".join(f"    y{j} = x * {rng.randint(0, 999)}  # step {j}\n" for j in range(16))
        (folder / f"module_{i:05d}.py").write_text(f"def f{i}(x):\n{body}    return x\n")
    size = sum(p.stat().st_size for p in root.rglob("*.py"))
    cfg = _config(tmp_path, source=f"{root}/**/*.py", safety_policy="", tokenizer_train_bytes=20_000)
    # A task's working set (its texts' token lists) is bounded by its size, not the corpus's: small tasks
    # keep it well below this small corpus. pathlib interns every name it parses, and the interpreter's
    # table of interned strings grows in one ~4 MB step at some point whatever the corpus: not measured.
    monkeypatch.setattr(cache_build, "TASK_FILES", 64)
    monkeypatch.setattr(sys, "intern", lambda text: text)
    tracemalloc.start()
    try:
        bundle = prepare_data(cfg, tmp_path / "work", write=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bundle.manifest["totals"]["files"] == 10_000 and size > 4_000_000
    assert peak < size / 3, (peak, size)  # a list of the 10,000 paths alone would take more


def test_the_hash_sample_keeps_what_a_budgeted_reader_takes():
    rng = np.random.default_rng(0)
    hashes, sizes = rng.random(5_000), rng.integers(1, 400, 5_000)
    sample = HashSample(budget=30_000, batch=64)  # compacted every 64 documents or so
    for i in range(5_000):
        sample.add(float(hashes[i]), int(sizes[i]), i, 0)
    lowest = int(np.argmin(hashes))
    sample.remove(lowest, 0)
    order = [i for i in np.argsort(hashes, kind="stable") if i != lowest]
    ahead = np.cumsum(sizes[order]) - sizes[order]
    expected = [i for i, a in zip(order, ahead, strict=True) if a < 30_000]
    files, documents = sample.chosen()
    assert files.tolist() == expected and not documents.any()
    assert 50 < len(expected) < 1_000
