"""The data pipeline on real files: sources, split, manifest, token cache and grain iterators."""

import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest

from codex_jax.config import default_config
from codex_jax.data import cache
from codex_jax.data.pipeline import (
    WindowSource,
    eval_batches,
    make_train_iterator,
    prepare_data,
)
from codex_jax.data.sources import Document, list_files, parse_source, read_source, stdlib_root
from codex_jax.data.splits import split_documents
from codex_jax.errors import UserError


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """30 small real stdlib modules copied into a temporary directory tree."""
    root = tmp_path_factory.mktemp("corpus")
    small = [p for p in sorted(stdlib_root().glob("*.py")) if 500 < p.stat().st_size < 15_000]
    for i, path in enumerate(small[:30]):
        target = root / ("pkg" if i % 3 else "") / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    return root


def small_config(corpus_dir, **data):
    cfg = default_config()
    cfg.data.source = f"{corpus_dir}/**/*.py"
    cfg.data.seq_len = 32
    cfg.data.batch_size = 8
    cfg.data.eval_fraction = 0.2
    cfg.data.tokenizer_train_bytes = 200_000
    cfg.model.vocab_size = 400
    for key, value in data.items():
        cfg.data[key] = value
    return cfg


@pytest.fixture(scope="module")
def bundle(corpus_dir, tmp_path_factory):
    return prepare_data(small_config(corpus_dir), tmp_path_factory.mktemp("work"), write=True)


# --- sources -----------------------------------------------------------------------------------


def test_stdlib_source_lists_python_files_without_site_packages():
    root, files = list_files(parse_source("stdlib"))
    assert len(files) > 500 and files == sorted(files)
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in files)
    corpus = read_source("stdlib", max_files=5)
    assert len(corpus.files) == 5 and corpus.root == str(root)


def test_max_files_is_a_deterministic_subset(corpus_dir):
    source = f"{corpus_dir}/**/*.py"
    every = [f.path for f in read_source(source).files]
    some = [f.path for f in read_source(source, max_files=7).files]
    assert len(some) == 7 and set(some) <= set(every)
    assert some == [f.path for f in read_source(source, max_files=7).files]


def test_text_files_lose_bom_and_crlf_and_bad_files_are_counted(tmp_path):
    (tmp_path / "a.py").write_bytes(b"\xef\xbb\xbfx = 1\r\ny = 2\r\n")
    (tmp_path / "b.py").write_bytes(b"ok = 1\n\xff\xfe bad\n")
    (tmp_path / "c.py").write_bytes(b"  \n")
    corpus = read_source(f"{tmp_path}/*.py")
    assert [d.text for d in corpus.documents] == ["x = 1\ny = 2\n"]
    bad = {f.path: f.bad for f in corpus.files}
    assert bad == {"a.py": [], "b.py": ["b.py:2: undecodable bytes"], "c.py": ["c.py:1: empty"]}


def test_jsonl_source_skips_and_counts_bad_records(tmp_path):
    lines = [
        b'\xef\xbb\xbf{"text": "first\\r\\nline"}',
        b"not json",
        b'{"other": "x"}',
        b'{"text": 3}',
        b"",
        b'{"text": "  "}',
        b'{"text": "caf\xff"}',
        b'{"text": "\\ud800"}',
        b'{"text": "second"}\r',
    ]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    corpus = read_source(f"jsonl:{tmp_path}/d.jsonl:text")
    assert [(d.key, d.text) for d in corpus.documents] == [
        ("d.jsonl:1", "first\nline"),
        ("d.jsonl:9", "second"),
    ]
    (report,) = corpus.files
    assert report.records == 2 and report.skipped == 6
    assert report.bad[:3] == [
        "d.jsonl:2: invalid JSON",
        "d.jsonl:3: no string field 'text'",
        "d.jsonl:4: no string field 'text'",
    ]
    assert len(report.bad) == 5


def test_csv_source_reads_a_column_and_counts_bad_rows(tmp_path):
    data = 'id,code\n1,"def f():\r\n    return 1"\n2,\n3\n4,"caf\xff"\n5,plain\n'.encode("latin-1")
    (tmp_path / "c.csv").write_bytes(data)
    corpus = read_source(f"csv:{tmp_path}/c.csv:code")
    assert [(d.key, d.text) for d in corpus.documents] == [
        ("c.csv:2", "def f():\n    return 1"),
        ("c.csv:7", "plain"),
    ]
    assert corpus.files[0].bad == [
        "c.csv:4: empty",
        "c.csv:5: no column 'code'",
        "c.csv:6: undecodable bytes",
    ]
    with pytest.raises(UserError, match="no column 'text'"):
        read_source(f"csv:{tmp_path}/c.csv:text")


def test_sources_that_give_nothing_are_user_errors(tmp_path):
    (tmp_path / "empty.py").write_text("")
    with pytest.raises(UserError, match=r"data.source '.*\*\.py' yielded no documents"):
        read_source(f"{tmp_path}/*.py")
    with pytest.raises(UserError, match="file not found: .*missing.jsonl"):
        read_source(f"jsonl:{tmp_path}/missing.jsonl:text")
    with pytest.raises(UserError, match="no files match"):
        read_source(f"{tmp_path}/*.txt")
    with pytest.raises(UserError, match="jsonl:PATH:FIELD"):
        read_source("jsonl:nofield")


# --- split and manifest ------------------------------------------------------------------------


def test_split_is_by_file_stable_and_never_empty(corpus_dir):
    docs = read_source(f"{corpus_dir}/**/*.py").documents
    train, held_out = split_documents(docs, 0.2)
    assert {d.file for d in train}.isdisjoint({d.file for d in held_out})
    assert len(train) + len(held_out) == len(docs) and train and held_out
    assert split_documents(list(reversed(docs)), 0.2)[1] == list(reversed(held_out))
    two = [Document("a", "a", "x"), Document("b", "b", "y")]
    for fraction in (1e-9, 0.999999):
        assert [len(s) for s in split_documents(two, fraction)] == [1, 1]
    with pytest.raises(UserError, match="at least 2"):
        split_documents(two[:1], 0.5)


def test_manifest_records_files_splits_totals_and_tokenizer(bundle, corpus_dir):
    manifest = json.loads(bundle.manifest_path.read_text())
    files = {f["path"]: f for f in manifest["files"]}
    assert len(files) == 30 == manifest["totals"]["files"]
    for path, entry in files.items():
        data = (corpus_dir / path).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data) and entry["split"] in ("train", "eval")
    assert manifest["totals"]["eval_documents"] == sum(f["split"] == "eval" for f in files.values())
    assert manifest["tokenizer"]["sha256"] == bundle.tokenizer.checksum
    assert manifest["windows"] == {
        "train": len(bundle.train_windows),
        "eval": len(bundle.eval_windows),
    }
    assert len(manifest["checksum"]) == 64


# --- token streams and cache -------------------------------------------------------------------


def test_windows_cut_the_packed_stream_with_eos_between_documents(bundle, corpus_dir):
    tok = bundle.tokenizer
    assert bundle.train_windows.shape[1] == 33 and bundle.train_windows.dtype == np.uint16
    stream = np.asarray(bundle.train_windows).reshape(-1)
    first_eos = int(np.argmax(stream == tok.eos_id))
    train_files = [f["path"] for f in bundle.manifest["files"] if f["split"] == "train"]
    assert tok.decode(stream[:first_eos]) == (corpus_dir / train_files[0]).read_text()
    assert (stream == tok.eos_id).sum() >= 2


def test_cache_is_reused_and_rebuilt_when_stale(corpus_dir, tmp_path, capsys):
    cfg = small_config(corpus_dir)
    first = prepare_data(cfg, tmp_path, write=True)
    tokens = tmp_path / "cache" / "train.tokens"
    assert isinstance(first.train_windows, np.memmap)
    stamp = tokens.stat().st_mtime_ns
    capsys.readouterr()
    prepare_data(cfg, tmp_path, write=True)
    assert "reusing token cache" in capsys.readouterr().err and tokens.stat().st_mtime_ns == stamp

    cfg.data.seq_len = 16  # a new seq_len -> rebuilt
    assert prepare_data(cfg, tmp_path, write=True).train_windows.shape[1] == 17
    assert "reusing" not in capsys.readouterr().err
    assert json.loads((tmp_path / "cache" / "key.json").read_text())["key"]["seq_len"] == 16

    other = tmp_path / "other_tokenizer"  # a different tokenizer -> rebuilt
    texts = [d.text for d in read_source(cfg.data.source).documents]
    from codex_jax.tokenizers.sentencepiece import train_bpe, training_lines

    train_bpe(training_lines(texts, 100_000), 390).save(other)
    cfg.data.tokenizer = str(other)
    rebuilt = prepare_data(cfg, tmp_path, write=True)
    assert "reusing" not in capsys.readouterr().err and rebuilt.tokenizer.vocab_size == 390
    key = json.loads((tmp_path / "cache" / "key.json").read_text())["key"]
    assert key["tokenizer_checksum"] == rebuilt.tokenizer.checksum


def test_cache_is_rebuilt_when_a_file_changes_or_the_cache_is_damaged(corpus_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus)
    cfg = small_config(corpus)
    first = prepare_data(cfg, tmp_path / "work", write=True)
    victim = sorted(corpus.glob("*.py"))[0]
    victim.write_text(victim.read_text() + "\nextra = 1\n")
    capsys.readouterr()
    second = prepare_data(cfg, tmp_path / "work", write=True)
    assert "reusing" not in capsys.readouterr().err
    assert second.manifest["checksum"] != first.manifest["checksum"]
    with open(tmp_path / "work" / "cache" / "eval.tokens", "ab") as f:
        f.write(b"\0\0")
    prepare_data(cfg, tmp_path / "work", write=True)
    assert "reusing" not in capsys.readouterr().err


def test_a_non_writing_process_writes_nothing_and_agrees(bundle, corpus_dir, tmp_path):
    other = prepare_data(small_config(corpus_dir), tmp_path / "w", write=False)
    assert not (tmp_path / "w").exists()
    np.testing.assert_array_equal(other.train_windows, bundle.train_windows)
    assert other.tokenizer.checksum == bundle.tokenizer.checksum


def test_token_dtype_widens_for_big_vocabularies():
    assert cache.token_dtype(65_536) == np.uint16 and cache.token_dtype(65_537) == np.uint32


# --- grain iterators ---------------------------------------------------------------------------


def take(it, n):
    return [next(it) for _ in range(n)]


def test_train_batches_are_deterministic_per_seed(bundle):
    batches = take(make_train_iterator(bundle.train_windows, 8, seed=0), 5)
    again = take(make_train_iterator(bundle.train_windows, 8, seed=0), 5)
    other = take(make_train_iterator(bundle.train_windows, 8, seed=1), 5)
    assert batches[0].shape == (8, 33) and batches[0].dtype == np.int32
    np.testing.assert_array_equal(np.stack(batches), np.stack(again))
    assert not np.array_equal(np.stack(batches), np.stack(other))
    rows = {tuple(r) for r in np.asarray(bundle.train_windows)}
    assert all(tuple(r) in rows for b in batches for r in b)


def test_every_epoch_is_a_new_permutation_of_all_windows():
    windows = np.arange(12 * 3, dtype=np.uint16).reshape(12, 3)
    batches = take(make_train_iterator(windows, 4, seed=3), 6)
    epochs = [np.concatenate(batches[:3])[:, 0] // 3, np.concatenate(batches[3:])[:, 0] // 3]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12))
    assert list(epochs[0]) != list(epochs[1])


def test_processes_together_consume_the_single_process_global_batch():
    windows = np.arange(37 * 5, dtype=np.uint16).reshape(37, 5)
    single = take(make_train_iterator(windows, 8, seed=7), 12)  # crosses epoch boundaries
    parts = [take(make_train_iterator(windows, 4, 7, p, 2), 12) for p in range(2)]
    for step in range(12):
        np.testing.assert_array_equal(
            np.concatenate([parts[0][step], parts[1][step]]), single[step]
        )


def test_iterator_state_resumes_exactly_on_a_fresh_iterator(bundle):
    it = make_train_iterator(bundle.train_windows, 8, seed=0)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 4)
    fresh = make_train_iterator(bundle.train_windows, 8, seed=0)
    fresh.set_state(state)
    np.testing.assert_array_equal(np.stack(take(fresh, 4)), np.stack(expected))


def test_iterator_resumes_through_orbax_and_grain_checkpoint(bundle, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    it = make_train_iterator(bundle.train_windows, 8, seed=0)
    take(it, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    expected = take(it, 3)
    fresh = make_train_iterator(bundle.train_windows, 8, seed=0)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        args = ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
        restored = manager.restore(1, args=args)["data"]
    np.testing.assert_array_equal(np.stack(take(restored, 3)), np.stack(expected))


def test_worker_processes_give_the_same_batches(bundle):
    plain = take(make_train_iterator(bundle.train_windows, 8, seed=0), 4)
    it = make_train_iterator(bundle.train_windows, 8, seed=0, num_workers=1)
    np.testing.assert_array_equal(np.stack(take(it, 2)), np.stack(plain[:2]))
    state = it.get_state()
    fresh = make_train_iterator(bundle.train_windows, 8, seed=0, num_workers=1)
    fresh.set_state(state)
    np.testing.assert_array_equal(np.stack(take(fresh, 2)), np.stack(plain[2:]))


def test_window_source_pickles_a_cached_memmap_by_path(bundle):
    source = pickle.loads(pickle.dumps(WindowSource(bundle.train_windows)))
    assert len(pickle.dumps(WindowSource(bundle.train_windows))) < 1000
    np.testing.assert_array_equal(source[[0, 5]], bundle.train_windows[[0, 5]])
    assert "train.tokens" in repr(source)


def test_eval_batches_are_fixed_and_split_across_processes():
    windows = np.arange(20 * 3, dtype=np.uint16).reshape(20, 3)
    single = eval_batches(windows, 8, 2)
    assert [b.dtype for b in single] == [np.int32] * 2
    np.testing.assert_array_equal(np.concatenate(single), windows[:16])
    parts = [eval_batches(windows, 4, 2, p, 2) for p in range(2)]
    for k in range(2):
        np.testing.assert_array_equal(np.concatenate([parts[0][k], parts[1][k]]), single[k])
    with pytest.raises(UserError, match="eval split has 20.*eval.num_batches"):
        eval_batches(windows, 8, 3)
