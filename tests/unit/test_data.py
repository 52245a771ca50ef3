"""The data pipeline on real files: sources, split, manifest, token cache and grain iterators."""

import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest

from codex_jax.config.schema import default_config
from codex_jax.corpus.globbing import stdlib_root
from codex_jax.corpus.sources import Document, read_source
from codex_jax.corpus.splits import split_documents
from codex_jax.data import cache
from codex_jax.data.pipeline import (
    WindowSource,
    eval_batches,
    make_train_iterator,
    prepare_data,
)
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


def test_eval_source_is_the_held_out_split(corpus_dir, tmp_path, capsys):
    """data.eval_source: its files are the eval split and leave the training split."""
    cfg = small_config(corpus_dir, eval_source=f"{corpus_dir}/pkg/*.py")
    data = prepare_data(cfg, tmp_path, write=True)
    files = data.manifest["files"]
    from_eval = [f for f in files if f["from"] == "eval_source"]
    assert from_eval and all(f["split"] == "eval" for f in from_eval)
    assert {f["path"] for f in from_eval} == {p.name for p in (corpus_dir / "pkg").glob("*.py")}
    train_files = [f["path"] for f in files if f["from"] == "source"]
    assert train_files and not any(p.startswith("pkg/") for p in train_files)  # no overlap
    assert "are also in data.eval_source" in _err(capsys)
    totals = data.manifest["totals"]
    assert totals["eval_documents"] == len(from_eval)
    assert totals["train_documents"] == len(train_files)
    assert data.manifest["eval_source"] == cfg.data.eval_source
    cfg.data.eval_source = f"{corpus_dir}/**/*.py"  # everything held out: nothing to train on
    with pytest.raises(UserError, match="no documents left for training"):
        prepare_data(cfg, tmp_path / "all", write=False)


def test_include_exclude_and_policy_reach_the_manifest(corpus_dir, tmp_path):
    cfg = small_config(corpus_dir, exclude="pkg/**", on_bad_record="error")
    data = prepare_data(cfg, tmp_path, write=True)
    manifest = json.loads(data.manifest_path.read_text())
    assert manifest["exclude"] == "pkg/**" and manifest["on_bad_record"] == "error"
    assert manifest["files"] and not any(f["path"].startswith("pkg/") for f in manifest["files"])


# --- token streams and cache -------------------------------------------------------------------


def test_windows_cut_the_packed_stream_with_eos_between_documents(bundle, corpus_dir):
    tok = bundle.tokenizer
    assert bundle.train_windows.shape[1] == 33 and bundle.train_windows.dtype == np.uint16
    stream = np.asarray(bundle.train_windows).reshape(-1)
    first_eos = int(np.argmax(stream == tok.eos_id))
    train_files = [f["path"] for f in bundle.manifest["files"] if f["split"] == "train"]
    assert tok.decode(stream[:first_eos]) == (corpus_dir / train_files[0]).read_text()
    assert (stream == tok.eos_id).sum() >= 2


def _err(capsys) -> str:
    return capsys.readouterr().err


def _tokens_stamp(workdir):
    return (workdir / "cache" / "train.tokens").stat().st_mtime_ns


def test_cache_is_reused_and_a_new_seq_len_only_rewindows_it(corpus_dir, tmp_path, capsys):
    cfg = small_config(corpus_dir)
    first = prepare_data(cfg, tmp_path, write=True)
    assert isinstance(first.train_windows, np.memmap)
    stamp = _tokens_stamp(tmp_path)
    _err(capsys)
    prepare_data(cfg, tmp_path, write=True)
    assert "reusing token cache" in _err(capsys) and _tokens_stamp(tmp_path) == stamp
    cfg.data.seq_len = 16  # the streams do not depend on seq_len: same cache, new windows
    short = prepare_data(cfg, tmp_path, write=True)
    assert "reusing token cache" in _err(capsys) and _tokens_stamp(tmp_path) == stamp
    assert short.train_windows.shape[1] == 17
    fresh = prepare_data(cfg, tmp_path / "fresh", write=False)  # ... equal to a fresh build's
    np.testing.assert_array_equal(short.train_windows, fresh.train_windows)
    np.testing.assert_array_equal(short.eval_windows, fresh.eval_windows)


def test_a_new_tokenizer_rebuilds_the_cache(corpus_dir, tmp_path, capsys):
    cfg = small_config(corpus_dir)
    prepare_data(cfg, tmp_path, write=True)
    other = tmp_path / "other_tokenizer"
    texts = [d.text for d in read_source(cfg.data.source).documents]
    from codex_jax.tokenizers.sentencepiece import train_bpe, training_lines

    train_bpe(training_lines(texts, 100_000), 390).save(other)
    cfg.data.tokenizer = str(other)
    _err(capsys)
    rebuilt = prepare_data(cfg, tmp_path, write=True)
    assert "building the token cache (changed: tokenizer checksum)" in _err(capsys)
    assert rebuilt.tokenizer.vocab_size == 390
    key = json.loads((tmp_path / "cache" / "key.json").read_text())["key"]
    assert key["tokenizer_checksum"] == rebuilt.tokenizer.checksum
    assert rebuilt.train_windows.max() < 390


def test_a_changed_corpus_is_reported_and_rebuilds_the_cache(corpus_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus)
    cfg = small_config(corpus)
    work = tmp_path / "work"
    first = prepare_data(cfg, work, write=True)
    _err(capsys)
    prepare_data(cfg, work, write=True)
    assert "corpus changed" not in _err(capsys)
    victims = sorted(corpus.glob("*.py"))
    victims[0].write_text(victims[0].read_text() + "\nextra = 1\n")
    victims[1].unlink()
    (corpus / "pkg" / "new_a.py").write_text("a = 1\n" * 50)
    (corpus / "pkg" / "new_b.py").write_text("b = 2\n" * 50)
    second = prepare_data(cfg, work, write=True)
    err = _err(capsys)
    assert "data: the corpus changed since" in err
    assert "2 file(s) added, 1 removed, 1 changed" in err
    assert "building the token cache (changed: corpus checksum)" in err
    assert second.manifest["checksum"] != first.manifest["checksum"]
    cfg.data.max_files = 20  # a setting that changes the corpus is named
    prepare_data(cfg, work, write=True)
    assert "settings changed: data.max_files" in _err(capsys)


@pytest.mark.parametrize("damage", ["truncate", "extend", "delete", "bad key"])
def test_a_damaged_cache_is_rebuilt_never_reused(bundle, corpus_dir, tmp_path, capsys, damage):
    cfg = small_config(corpus_dir)
    prepare_data(cfg, tmp_path, write=True)
    tokens, key = tmp_path / "cache" / "train.tokens", tmp_path / "cache" / "key.json"
    if damage == "truncate":
        tokens.write_bytes(tokens.read_bytes()[:-2])
    elif damage == "extend":
        tokens.write_bytes(tokens.read_bytes() + b"\0\0")
    elif damage == "delete":
        tokens.unlink()
    else:
        key.write_text("{not json")
    _err(capsys)
    again = prepare_data(cfg, tmp_path, write=True)
    err = _err(capsys)
    assert "reusing" not in err and "building the token cache" in err
    np.testing.assert_array_equal(again.train_windows, bundle.train_windows)
    assert "reusing token cache" in (prepare_data(cfg, tmp_path, write=True), _err(capsys))[1]


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
        np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), single[step])


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


def test_worker_processes_give_the_same_batches_and_resume(bundle):
    """0 workers vs 2 worker processes (each prefetching 2): identical batches and states."""
    plain = take(make_train_iterator(bundle.train_windows, 8, seed=0), 6)
    it = make_train_iterator(bundle.train_windows, 8, seed=0, num_workers=2, prefetch=2)
    np.testing.assert_array_equal(np.stack(take(it, 3)), np.stack(plain[:3]))
    state = json.loads(json.dumps(it.get_state()))
    assert state == {"next_index": 3}
    np.testing.assert_array_equal(np.stack(take(it, 3)), np.stack(plain[3:]))
    it.close()
    single = make_train_iterator(bundle.train_windows, 8, seed=0)
    single.set_state(state)  # a worker iterator's state resumes a plain one (and vice versa)
    np.testing.assert_array_equal(np.stack(take(single, 3)), np.stack(plain[3:]))


def test_thread_prefetch_gives_the_same_batches_and_resumes(bundle):
    plain = take(make_train_iterator(bundle.train_windows, 8, seed=0), 8)
    it = make_train_iterator(bundle.train_windows, 8, seed=0, prefetch=4)
    np.testing.assert_array_equal(np.stack(take(it, 5)), np.stack(plain[:5]))
    fresh = make_train_iterator(bundle.train_windows, 8, seed=0, prefetch=4)
    fresh.set_state(it.get_state())
    np.testing.assert_array_equal(np.stack(take(fresh, 3)), np.stack(plain[5:]))
    with pytest.raises(ValueError, match="must be >= 0"):
        make_train_iterator(bundle.train_windows, 8, seed=0, prefetch=-1)


def test_window_source_pickles_a_cached_memmap_by_path(bundle):
    source = pickle.loads(pickle.dumps(WindowSource(bundle.train_windows)))
    assert len(pickle.dumps(WindowSource(bundle.train_windows))) < 1000
    np.testing.assert_array_equal(source[[0, 5]], bundle.train_windows[[0, 5]])
    assert "train.tokens" in repr(source)


def test_eval_batches_are_fixed_and_split_across_processes():
    windows = np.arange(20 * 3, dtype=np.uint16).reshape(20, 3)
    single = eval_batches(windows, 8, 2)
    assert [b.dtype for b in single] == [np.int32] * 2
    picked = np.linspace(0, 19, 16).round().astype(int)  # spread evenly over the split
    np.testing.assert_array_equal(np.concatenate(single), windows[picked])
    parts = [eval_batches(windows, 4, 2, p, 2) for p in range(2)]
    for k in range(2):
        np.testing.assert_array_equal(np.concatenate([parts[0][k], parts[1][k]]), single[k])
    with pytest.raises(UserError, match="eval split has 20.*eval.num_batches"):
        eval_batches(windows, 8, 3)
