"""The token cache build: worker processes, resuming a killed build, host shares, file tasks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from codex_jax.config.schema import default_config
from codex_jax.corpus.globbing import stdlib_root
from codex_jax.corpus.source_spec import parse_source
from codex_jax.corpus.sources import read_source, source_files
from codex_jax.corpus.splits import hash_fraction, split_documents
from codex_jax.data import cache, cache_build, cache_combine
from codex_jax.data.pipeline import prepare_data
from codex_jax.errors import UserError
from codex_jax.tokenizers.sentencepiece import train_bpe, training_lines


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """40 small real stdlib modules in a temporary tree."""
    root = tmp_path_factory.mktemp("corpus")
    small = [p for p in sorted(stdlib_root().glob("*.py")) if 500 < p.stat().st_size < 12_000]
    for i, path in enumerate(small[:40]):
        target = root / ("pkg" if i % 3 else "") / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    return root


@pytest.fixture(scope="module")
def texts(corpus_dir):
    return [d.text for d in read_source(f"{corpus_dir}/**/*.py").documents]


@pytest.fixture(scope="module")
def tokenizer(texts, tmp_path_factory):
    return train_bpe(training_lines(texts, 200_000), 400)


def _tokens(directory, split="train"):
    return np.fromfile(directory / f"{split}.tokens", np.uint16)


def test_worker_processes_build_the_same_bytes_as_one_process(tmp_path, corpus_dir, tokenizer, texts):
    jax.devices()  # JAX is up (its threads started) before the workers are: they are spawned, not forked
    cfg = default_config()
    cfg.data.source, cfg.data.seq_len, cfg.data.eval_fraction = f"{corpus_dir}/**/*.py", 32, 0.2
    cfg.data.tokenizer = str(tokenizer.save(tmp_path / "tok"))
    cfg.logging.progress = False
    bundles = {}
    for workers in (1, 2):
        cfg.data.cache_workers = workers
        bundles[workers] = prepare_data(cfg, tmp_path / f"w{workers}", write=True)
        assert not list((tmp_path / f"w{workers}/cache").glob("build-*"))  # the shards are gone once combined
    np.testing.assert_array_equal(bundles[1].train_windows, bundles[2].train_windows)
    np.testing.assert_array_equal(bundles[1].eval_windows, bundles[2].eval_windows)
    train, _ = split_documents(read_source(cfg.data.source).documents, 0.2)
    expected = cache.pack(tokenizer, [d.text for d in train], progress=False)
    np.testing.assert_array_equal(_tokens(tmp_path / "w2/cache"), expected)


_KILLED_BUILD = """
import sys
from pathlib import Path
from codex_jax.data import cache, cache_build
from codex_jax.tokenizers.sentencepiece import SentencePieceTokenizer
tok = SentencePieceTokenizer.load(sys.argv[1])
texts = Path(sys.argv[2]).read_text().split("\\0")
key = cache.cache_key("test", tok)
cache_build.build_texts(Path(sys.argv[3]), key, tok, {"train": texts}, 2, 20_000, False)
"""  # no `if __name__ == "__main__":` guard: the spawned workers must not run this script again


def test_a_killed_build_finishes_on_rerun_to_the_same_bytes(tmp_path, tokenizer, texts, capsys):
    many = texts * 12  # ~2.5 MB: about 120 tasks, a few seconds of tokenizing
    tokenizer.save(tmp_path / "tok")
    (tmp_path / "texts").write_text("\0".join(many))
    directory = tmp_path / "cache"
    key = cache.cache_key("test", tokenizer)
    folder = cache_combine.build_folder(directory, key)
    (tmp_path / "build.py").write_text(_KILLED_BUILD)
    args = [
        sys.executable,
        str(tmp_path / "build.py"),
        str(tmp_path / "tok"),
        str(tmp_path / "texts"),
        str(directory),
    ]
    proc = subprocess.Popen(args, start_new_session=True)  # its own process group: the workers die with it
    deadline = time.monotonic() + 60
    while len(list(folder.glob("*.json"))) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.2)  # the workers' exits
    done = len(list(folder.glob("*.json")))
    tasks = len(cache_build.text_tasks(many, "train", 20_000))
    assert 5 <= done < tasks, (done, tasks)
    assert not (directory / "key.json").exists()

    counts = cache_build.build_texts(directory, key, tokenizer, {"train": many}, 1, 20_000, progress=False)
    assert f"{done} of {tasks} tasks were done" in capsys.readouterr().err
    expected = cache.pack(tokenizer, many, progress=False)
    assert counts["train"] == len(expected)
    np.testing.assert_array_equal(_tokens(directory), expected)


def _in_memory_streams(source, tokenizer, eval_fraction):
    """What the in-memory path (read_source, split_documents, eval in hash order, pack) gives."""
    train, held_out = split_documents(read_source(source).documents, eval_fraction)
    held_out = sorted(held_out, key=lambda d: hash_fraction("eval-order:" + d.key))
    return {
        "train": cache.pack(tokenizer, [d.text for d in train], progress=False),
        "eval": cache.pack(tokenizer, [d.text for d in held_out], progress=False),
    }


@pytest.mark.parametrize("eval_fraction", [0.25, 0.0, 1.0])  # 0 and 1: one document is moved over
def test_host_shares_of_file_tasks_combine_to_the_in_memory_split(
    tmp_path, corpus_dir, tokenizer, eval_fraction
):
    source = f"{corpus_dir}/**/*.py"
    spec, root, files = source_files(source)
    key = {**cache.cache_key("files", tokenizer), "eval_fraction": eval_fraction}
    tasks = list(cache_build.file_tasks(spec, root, iter(files), 30_000, eval_fraction=eval_fraction))
    assert len(tasks) > 4
    directory = tmp_path / "cache"
    for host in (1, 0):  # two hosts, each tokenizing every other task into the shared folder
        stats = cache_build.build_files(directory, key, tokenizer, tasks, 1, host, 2, progress=False)
        assert stats.ran == len(tasks[host::2]) and stats.tasks == len(tasks)
    with pytest.raises(UserError, match="not done"):
        cache_combine.finish_files(directory, {**key, "other": 1}, len(tasks))
    cache_combine.finish_files(directory, key, len(tasks))
    for split, stream in _in_memory_streams(source, tokenizer, eval_fraction).items():
        np.testing.assert_array_equal(_tokens(directory, split), stream)
    reports = [json.loads(line) for line in (directory / "files.jsonl").read_text().splitlines()]
    assert [r["path"] for r in reports] == [os.path.relpath(f, root) for f in files]
    assert sum(r["records"] for r in reports) == len(files)


def test_a_files_build_in_worker_processes_reads_records_and_counts_bad_ones(tmp_path, tokenizer):
    lines = [json.dumps({"text": f"def f{i}(x):\n    return x + {i}\n"}) for i in range(200)]
    lines[7] = "{not json"
    for part in range(3):
        (tmp_path / f"part{part}.jsonl").write_text("\n".join(lines) + "\n")
    source = f"jsonl:{tmp_path}/*.jsonl:text"
    spec, root, files = source_files(source)
    assert spec == parse_source(source)
    key = cache.cache_key("jsonl", tokenizer)
    tasks = cache_build.file_tasks(spec, root, iter(files), 1, eval_fraction=0.1)  # one file per task
    stats = cache_build.build_files(tmp_path / "cache", key, tokenizer, tasks, workers=2, progress=False)
    assert (stats.tasks, stats.ran) == (3, 3)
    for split, stream in _in_memory_streams(source, tokenizer, 0.1).items():
        np.testing.assert_array_equal(_tokens(tmp_path / "cache", split), stream)
    reports = [json.loads(line) for line in (tmp_path / "cache/files.jsonl").read_text().splitlines()]
    assert [(r["records"], r["skipped"]) for r in reports] == [(199, 1)] * 3
    assert reports[0]["bad"] == [
        "part0.jsonl:8: invalid JSON (Expecting property name enclosed in double quotes)"
    ]
