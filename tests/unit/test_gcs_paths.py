"""gs:// paths through codex_jax.files, against a real Cloud Storage emulator (fake-gcs-server, started
by tests/gcs_emulator.py): file helpers, checkpoint manifests/commit/retention/corruption, metrics,
the workdir lock, tokenizers, Hugging Face weights and gs:// data sources. Plus the rule that keeps
user paths in codex_jax.files: no builtin ``open(`` of a path anywhere else in codex_jax/."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_llama
from etils import epath
from gcs_emulator import gcs  # noqa: F401 (the fixture)

from codex_jax import files
from codex_jax.checkpoint import COMMIT_FILE, MANIFEST, Checkpointer, CorruptCheckpoint
from codex_jax.corpus.sources import read_source
from codex_jax.errors import UserError
from codex_jax.interop.hf_weights import export_checkpoint, import_checkpoint
from codex_jax.metrics.ndjson import NdjsonWriter, read_ndjson
from codex_jax.models.transformer import Transformer, init_params
from codex_jax.setup.lock import LOCK_FILE, WorkdirLock, held_by_another
from codex_jax.tokenizers.sentencepiece import SentencePieceTokenizer
from codex_jax.tokenizers.train import train_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bucket(gcs, request):  # noqa: F811 (the fixture above)
    """A fresh ``gs://`` prefix per test in the emulator's bucket."""
    return epath.Path(f"gs://{gcs.bucket}/{request.node.name}")


# --- files: the path abstraction ---------------------------------------------------------------------


def test_as_path_keeps_local_paths_and_makes_uris_epaths(tmp_path):
    assert files.as_path(str(tmp_path)) == tmp_path and isinstance(files.as_path(tmp_path), Path)
    remote = files.as_path("gs://b/run")
    assert isinstance(remote, epath.Path) and os.fspath(remote / "x") == "gs://b/run/x"
    assert os.fspath(files.absolute("gs://b/run")) == "gs://b/run"  # not <cwd>/gs:/b/run
    assert files.absolute("rel") == Path.cwd() / "rel"
    assert files.is_remote("gs://b") and not files.is_remote(tmp_path)


def test_file_helpers_on_a_bucket(bucket, tmp_path):
    files.write_text_atomic(bucket / "a" / "x.txt", "hello")
    files.write_json(bucket / "a" / "b" / "c.json", {"k": 1})
    files.write_bytes_atomic(bucket / "top.py", b"print(1)\n")
    assert files.read_json(bucket / "a" / "b" / "c.json") == {"k": 1}
    assert files.size(bucket / "a" / "x.txt") == 5
    assert [p.relative_to(bucket).as_posix() for p in files.walk_files(bucket)] == [
        "a/b/c.json",
        "a/x.txt",
        "top.py",
    ]
    assert [os.fspath(p) for p in files.glob_files(f"{bucket}/**/*.json")] == [f"{bucket}/a/b/c.json"]
    assert files.sha256_file(bucket / "top.py") == files.sha256_file(_local(tmp_path / "t.py", b"print(1)\n"))
    files.copytree(bucket / "a", bucket / "copy")
    assert (bucket / "copy" / "b" / "c.json").read_text() == (bucket / "a" / "b" / "c.json").read_text()
    local = files.local_copy(bucket / "top.py")
    assert isinstance(local, Path) and local.read_bytes() == b"print(1)\n"
    (bucket / "top.py").write_bytes(b"changed\n")  # a changed object is downloaded again
    assert files.local_copy(bucket / "top.py").read_bytes() == b"changed\n"
    files.rmtree(bucket / "copy")
    assert not (bucket / "copy" / "b" / "c.json").exists()
    with pytest.raises(UserError, match="cannot read the run's config"):
        files.read_json(bucket / "missing.json", "run's config")


def _local(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- checkpoints: a step counts only when complete; corruption; retention ---------------------------


def _params(seed: int):
    return {"w": jnp.arange(6.0).reshape(2, 3) + seed, "b": jnp.full((3,), float(seed))}


def test_checkpoints_on_a_bucket_commit_retain_and_restore(bucket):
    ckpt = Checkpointer(bucket / "checkpoints", max_to_keep=2, async_save=False)
    for step in (1, 2, 3):
        ckpt.save_params(step, _params(step), {"step": step})
    assert ckpt.steps() == [2, 3]
    assert not (bucket / "checkpoints" / "1").exists()  # retention deleted every object of step 1
    for step in (2, 3):
        assert (bucket / "checkpoints" / str(step) / COMMIT_FILE).is_file()
    ckpt.verify(3)
    restored = ckpt.restore_params(3, jax.tree.map(np.asarray, _params(0)))
    assert jax.tree.all(jax.tree.map(np.array_equal, restored, _params(3)))
    assert ckpt.restore_meta(3) == {"step": 3}
    ckpt.close()


def test_a_step_without_its_commit_file_or_manifest_does_not_count(bucket):
    ckpt = Checkpointer(bucket / "checkpoints", max_to_keep=5, async_save=False)
    for step in (1, 2, 3):
        ckpt.save_params(step, _params(step), {"step": step})
    ckpt.close()
    (bucket / "checkpoints" / "3" / COMMIT_FILE).unlink()  # a save cut short before Orbax's commit
    (bucket / "checkpoints" / "2" / MANIFEST).unlink()  # a deletion cut short
    reader = Checkpointer(bucket / "checkpoints", read_only=True)
    assert reader.steps() == [1] and reader.select("latest") == 1
    reader.close()


def test_a_corrupt_object_is_named(bucket):
    ckpt = Checkpointer(bucket / "checkpoints", async_save=False)
    ckpt.save_params(1, _params(1), {"step": 1})
    ckpt.save_params(2, _params(2), {"step": 2})
    ckpt.close()
    listed = json.loads((bucket / "checkpoints" / "2" / MANIFEST).read_text())["files"]
    name = next(n for n in sorted(listed) if n.startswith("params/") and listed[n]["bytes"] > 8)
    obj = bucket / "checkpoints" / "2" / name
    obj.write_bytes(obj.read_bytes()[:-4])  # truncated
    reader = Checkpointer(bucket / "checkpoints", read_only=True)
    with pytest.raises(CorruptCheckpoint, match=re.escape(f"{name} has")):
        reader.select("latest")
    assert reader.select("latest", on_corrupt="previous") == 1
    reader.close()


# --- metrics, lock, tokenizer, Hugging Face weights ---------------------------------------------------


def test_ndjson_on_a_bucket_appends_across_writers_and_drops_a_cut_short_line(bucket):
    path = bucket / "metrics.ndjson"
    writer = NdjsonWriter(path)
    writer.write_scalars(1, {"train/loss": 2.5})
    assert read_ndjson(path) == [{"step": 1, "split": "train", "loss": 2.5}]  # uploaded at once
    writer.close()
    path.write_text(path.read_text() + '{"step": 2, "spl')  # a killed writer's cut-short line
    writer = NdjsonWriter(path)
    writer.write_scalars(2, {"train/loss": float("nan")})
    writer.close()
    records = read_ndjson(path)
    assert [r["step"] for r in records] == [1, 2] and np.isnan(records[1]["loss"])


def test_lock_on_a_bucket(bucket):
    lock = WorkdirLock(bucket)
    lock.acquire()
    assert (bucket / LOCK_FILE).is_file()
    holder = json.loads((bucket / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    lock.release()
    assert not (bucket / LOCK_FILE).exists()

    live = {**holder, "pid": os.getppid()}  # another live process on this host holds it
    (bucket / LOCK_FILE).write_text(json.dumps(live))
    with pytest.raises(UserError, match="another run is writing to this workdir"):
        WorkdirLock(bucket).acquire()
    assert held_by_another(bucket) is not None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    (bucket / LOCK_FILE).write_text(json.dumps({**live, "pid": int(dead.stdout)}))  # its holder died
    assert held_by_another(bucket) is None
    with WorkdirLock(bucket):
        assert json.loads((bucket / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_tokenizer_and_hf_weights_round_trip_through_a_bucket(bucket):
    tok = train_model(["def f(x):\n    return x + 1\n"] * 50 + ["class A:\n    pass\n"] * 50, 300)
    tok.save(bucket / "tok")
    again = SentencePieceTokenizer.load(bucket / "tok")
    assert again.checksum == tok.checksum and again.encode("def g(): pass") == tok.encode("def g(): pass")

    cfg = tiny_llama()
    params = init_params(cfg, jax.random.key(0))
    export_checkpoint(Transformer(cfg), params, bucket / "hf")
    assert {p.name for p in files.walk_files(bucket / "hf")} == {"config.json", "model.safetensors"}
    model, imported = import_checkpoint(os.fspath(bucket / "hf"))
    assert model.cfg.num_layers == cfg.num_layers
    assert jax.tree.all(jax.tree.map(np.array_equal, imported, params))


# --- data sources -----------------------------------------------------------------------------------


def test_gs_sources_read_like_local_ones(bucket, tmp_path):
    texts = {"pkg/a.py": "import os\n", "pkg/sub/b.py": "x = 1\n", "notes.txt": "not code\n"}
    for name, text in texts.items():
        (bucket / "src" / name).write_text(text)
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_text(text)
    remote = read_source(f"{bucket}/src/**/*.py")
    local = read_source(f"{tmp_path}/src/**/*.py")
    assert [(d.key, d.text) for d in remote.documents] == [(d.key, d.text) for d in local.documents]
    assert [d.key for d in remote.documents] == ["pkg/a.py", "pkg/sub/b.py"]
    assert [r.sha256 for r in remote.files] == [r.sha256 for r in local.files]
    (bucket / "d.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert [d.text for d in read_source(f"jsonl:{bucket}/d.jsonl:text").documents] == ["one", "two"]
    (bucket / "d.csv").write_text("code,other\nprint(1),x\n")
    assert [d.text for d in read_source(f"csv:{bucket}/d.csv:code").documents] == ["print(1)"]
    with pytest.raises(UserError, match="no files match"):
        read_source(f"{bucket}/nothing/**/*.py")


# --- the rule: user paths are opened through codex_jax.files only -----------------------------------

# module -> why its builtin/os open() is not of a user path that could be on a bucket
OPEN_ALLOWED = {
    "codex_jax/files.py": "the path abstraction itself",
    "codex_jax/metrics/ndjson.py": "the local file stays open for appends (a gs:// one is uploaded whole)",
    "codex_jax/setup/lock.py": "os.open + flock of a local lock file; a bucket's lock is one object",
    "codex_jax/sandbox/process.py": "the sandbox's own temporary folder, never a user path",
    "codex_jax/sandbox/judged.py": "the sandbox's own temporary folder, never a user path",
    "codex_jax/sandbox/inside.py": "runs inside the sandbox, on the files of its temporary folder",
    "codex_jax/data/cache_combine.py": "the token cache's local build folder (a gs:// cache is uploaded)",
    "codex_jax/data/cache_shards.py": "the local memory-mapped copy of a prepared cache's shards (temporary)",
}


def test_no_module_opens_a_path_outside_files_py():
    """A builtin ``open(`` (or ``os.open(``) anywhere in codex_jax/ but the allow-listed modules is an error:
    user paths go through ``codex_jax.files`` (``as_path(p).open()``/``read_*``/``write_*``)."""
    offenders = []
    for path in sorted((REPO / "codex_jax").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if re.search(r"(?<![\w.])open\(|\bos\.open\(|\bio\.open\(", code) and rel not in OPEN_ALLOWED:
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "open() of a path outside codex_jax/files.py:\n" + "\n".join(offenders)
