"""codex-jax prepare (an Apache Beam pipeline, codex_jax/prepare/) writes the token cache as ArrayRecord
shards: the same rows as the in-process build with 1 and 2 workers, read by training as its own cache,
refused when prepared for other data, a missing or corrupt shard one UserError, and gs:// in and out (the
emulator)."""

import json
import shutil

import numpy as np
import pytest
from etils import epath
from gcs_emulator import GcsEmulator, emulator_environ

from codex_jax.config import default_config
from codex_jax.corpus.globbing import stdlib_root
from codex_jax.data import streaming
from codex_jax.data.pipeline import prepare_data
from codex_jax.errors import UserError
from codex_jax.files import as_path
from codex_jax.prepare.beam_pipeline import default_options
from codex_jax.prepare.run import prepare

pytest.importorskip("apache_beam")

BLOCK_POLICY = "extends: default\nrules:\n  - id: no-ghp\n    action: block\n    literal: ghp_\n"
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
SHARD_TOKENS = 3_000  # rounded up to whole records: several shards of the train stream


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Small stdlib modules, one file with a secret the policy blocks and one undecodable file."""
    root = tmp_path_factory.mktemp("corpus")
    small = [p for p in sorted(stdlib_root().glob("*.py")) if 1_000 < p.stat().st_size < 8_000]
    for i, path in enumerate(small[:16]):
        target = root / "code" / ("pkg" if i % 3 else "") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (root / "code" / "token.py").write_text('T = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"\n')
    (root / "code" / "bad.py").write_bytes(b"x = 1\n\xff\n")  # not UTF-8: skipped and counted
    (root / "block.yaml").write_text(BLOCK_POLICY)
    return root


def _config(source, policy, **data):
    cfg = default_config()
    cfg.data.source = f"{source}/**/*.py"
    cfg.data.seq_len, cfg.data.batch_size, cfg.data.eval_fraction = 16, 4, 0.2
    cfg.data.tokenizer_train_bytes = 30_000
    cfg.data.safety_policy = str(policy)
    cfg.model.vocab_size = 512
    cfg.logging.progress = False
    for key, value in data.items():
        cfg.data[key] = value
    return cfg


@pytest.fixture(scope="module")
def in_process(corpus, tmp_path_factory):
    """The in-process build's windows and file reports (what training builds itself)."""
    workdir = tmp_path_factory.mktemp("in_process")
    bundle = prepare_data(_config(corpus / "code", corpus / "block.yaml"), workdir)
    return bundle, (workdir / "cache" / "files.jsonl").read_text()


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    """A workdir prepared by the pipeline in one in-process worker, and its summary."""
    workdir = tmp_path_factory.mktemp("prepared")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(streaming, "TASK_BYTES", 12_000)  # several tasks
        summary = prepare(_config(corpus / "code", corpus / "block.yaml"), workdir, IN_MEMORY, SHARD_TOKENS)
    return workdir, summary


def _same_rows(bundle, expected):
    np.testing.assert_array_equal(np.asarray(bundle.train_windows), np.asarray(expected.train_windows))
    np.testing.assert_array_equal(np.asarray(bundle.eval_windows), np.asarray(expected.eval_windows))


def _check_prepared(corpus, workdir, summary, in_process, capsys):
    expected, reports = in_process
    assert (
        summary["shards"]["train"] > 1 and summary["tokens"]["train"] == expected.manifest["tokens"]["train"]
    )
    assert summary["skipped_records"] == expected.manifest["totals"]["skipped"] >= 1  # undecodable
    assert summary["safety"]["records_dropped"] == expected.manifest["safety"]["records_dropped"] >= 1
    assert sorted(p.name for p in (workdir / "cache").iterdir() if p.name.startswith("build-")) == []
    capsys.readouterr()
    bundle = prepare_data(_config(corpus / "code", corpus / "block.yaml"), workdir)
    assert "reusing token cache" in capsys.readouterr().err  # nothing tokenized again
    _same_rows(bundle, expected)
    assert (workdir / "cache" / "files.jsonl").read_text() == reports
    assert bundle.manifest["checksum"] == expected.manifest["checksum"]


def test_one_worker_gives_the_in_process_rows(corpus, prepared, in_process, capsys):
    workdir, summary = prepared
    assert summary["counters"]["tasks_run"] > 2 and summary["counters"]["bad_records_skipped"] >= 1
    _check_prepared(corpus, workdir, summary, in_process, capsys)


def test_two_worker_processes_give_the_in_process_rows(corpus, in_process, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(streaming, "TASK_BYTES", 9_000)  # other tasks than the one-worker run: same rows
    args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    summary = prepare(_config(corpus / "code", corpus / "block.yaml"), tmp_path, args, SHARD_TOKENS)
    _check_prepared(corpus, tmp_path, summary, in_process, capsys)
    again = prepare(_config(corpus / "code", corpus / "block.yaml"), tmp_path, args, SHARD_TOKENS)
    assert again["counters"] == {} and again["tokens"] == summary["tokens"]  # up to date: kept


def test_a_cache_prepared_for_other_data_is_refused_naming_the_difference(corpus, prepared):
    workdir, _ = prepared
    cfg = _config(corpus / "code", corpus / "block.yaml", max_files=6)
    with pytest.raises(
        UserError, match=r"prepared \(codex-jax prepare\) for other data: data.max_files=0 there, 6"
    ):
        prepare_data(cfg, workdir)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated"])
def test_a_damaged_shard_is_one_error_naming_it(corpus, prepared, tmp_path, damage):
    workdir = tmp_path / "run"
    shutil.copytree(prepared[0], workdir)
    shard = (
        workdir
        / "cache"
        / json.loads((workdir / "cache" / "key.json").read_text())["shards"]["train"][1]["name"]
    )
    if damage == "missing":
        shard.unlink()
    elif damage == "corrupt":
        data = bytearray(shard.read_bytes())
        data[100] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        shard.write_bytes(shard.read_bytes()[:-7])
    want = {"missing": "is missing", "corrupt": "is corrupt", "truncated": "is corrupt"}[damage]
    with pytest.raises(UserError, match=f"token cache shard .*{shard.name} {want}"):
        prepare_data(_config(corpus / "code", corpus / "block.yaml"), workdir)


def test_gs_inputs_and_outputs_through_the_emulator(corpus, tmp_path):
    with GcsEmulator() as emulator, emulator_environ(emulator, tmp_path / "remote_copies"):
        bucket = epath.Path(f"gs://{emulator.bucket}")
        for path in sorted((corpus / "code").rglob("*")):
            if path.is_file():
                (bucket / "corpus" / path.relative_to(corpus / "code")).write_bytes(path.read_bytes())
        (bucket / "block.yaml").write_bytes((corpus / "block.yaml").read_bytes())
        cfg = _config(bucket / "corpus", corpus / "block.yaml")
        summary = prepare(cfg, as_path(f"gs://{emulator.bucket}/run"), IN_MEMORY, SHARD_TOKENS)
        assert summary["shards"]["train"] > 1
        names = sorted(p.name for p in (bucket / "run" / "cache").iterdir())
        assert "key.json" in names and "files.jsonl" in names and not [n for n in names if "build-" in n]
        bundle = prepare_data(cfg, as_path(f"gs://{emulator.bucket}/run"))
        expected = prepare_data(cfg, tmp_path / "in_process")  # the same gs:// source, built in-process
        _same_rows(bundle, expected)


def test_beam_options_default_to_two_direct_runner_processes_and_pass_through():
    assert default_options([]) == [
        "--runner=DirectRunner",
        "--direct_num_workers=2",
        "--direct_running_mode=multi_processing",
        "--default_sdk_harness_log_level=WARNING",
    ]
    dataflow = default_options(["--runner=DataflowRunner", "--project=p", "--region=r"])
    assert dataflow == [
        "--runner=DataflowRunner",
        "--project=p",
        "--region=r",
        "--default_sdk_harness_log_level=WARNING",
    ]
    assert default_options(["--direct_num_workers=1"])[:1] == ["--direct_num_workers=1"]
    assert "--direct_num_workers=2" not in default_options(["--direct_num_workers=1"])


def test_a_source_training_reads_into_memory_is_not_prepared(corpus, tmp_path):
    cfg = _config(corpus / "code", corpus / "block.yaml", format="chat")
    with pytest.raises(UserError, match="must be a text source of files"):
        prepare(cfg, tmp_path, IN_MEMORY)


def test_a_file_gone_after_pass_1_fails_the_pipeline_in_one_error(corpus, tmp_path, monkeypatch):
    source = tmp_path / "code"
    shutil.copytree(corpus / "code", source)
    listed = streaming.StreamedSource.tasks

    def tasks_then_remove(self):  # a listed file disappears before the pipeline reads it
        tasks = list(listed(self))
        (source / "pkg").joinpath(sorted(p.name for p in (source / "pkg").iterdir())[0]).unlink()
        return iter(tasks)

    monkeypatch.setattr(streaming.StreamedSource, "tasks", tasks_then_remove)
    with pytest.raises(UserError, match=r"cannot read .*No such file"):
        prepare(_config(source, corpus / "block.yaml"), tmp_path / "run", IN_MEMORY)
