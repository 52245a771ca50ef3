"""A run whose workdir and data live in a gs:// bucket, against a real Cloud Storage emulator
(fake-gcs-server, tests/gcs_emulator.py; gcsfs via STORAGE_EMULATOR_HOST, tensorstore via
TENSORSTORE_GCS_HTTP_URL): train from a gs:// source, kill -9 while a checkpoint is being saved,
resume to the same bits as an uninterrupted run, eval and generate from the bucket, export to it in
Hugging Face form and train from that export (``model.init_from='hf:gs://...'``), and a corrupt object
as one error line. Runs are forked from one process that
imported codex_jax (tests/e2e/zygote.py)."""

import json
import os
import signal
import sysconfig
import time
import urllib.parse
import urllib.request
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import CONFIGS, REPO, xla_flags
from etils import epath
from gcs_emulator import GcsEmulator, emulator_environ
from zygote import Zygote

from codex_jax import files
from codex_jax.checkpoint import COMMIT_FILE, MANIFEST, TRAIN_ITEMS, Checkpointer
from codex_jax.interop.hf_weights import import_checkpoint

STEPS = 12
ARGS = [
    f"--config={CONFIGS / 'tiny.py'}",
    f"--config.train.steps={STEPS}",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
    "--config.checkpoint.every_steps=4",
    "--config.checkpoint.max_to_keep=2",
    "--config.generate.max_new_tokens=0",
    "--config.logging.writers=ndjson,tensorboard",
    "--config.model.num_layers=1",
    "--config.model.num_kv_heads=4",  # GPT-2 attention, so that the run exports to Hugging Face form
    "--config.eval.num_batches=1",
    "--config.data.max_files=0",
]
ONE_DEVICE = {"XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
UNTIMED = {"compile_seconds", "tokens_per_second", "step_time", "data_wait_fraction", "mfu"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """The emulator (its variables in os.environ), a zygote that forks runs, and a gs:// corpus of 12
    stdlib files."""
    with GcsEmulator() as emulator, emulator_environ(emulator, tmp_path_factory.mktemp("remote_copies")):
        zygote = Zygote({**os.environ, "JAX_PLATFORMS": "cpu"}, REPO)
        corpus = epath.Path(f"gs://{emulator.bucket}/corpus")
        for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:12]:
            (corpus / "lib" / path.name).write_bytes(path.read_bytes())
        logs = tmp_path_factory.mktemp("gcs_logs")
        try:
            yield emulator, zygote, logs, f"--config.data.source={corpus}/**/*.py"
        finally:
            if zygote.pid is not None and alive(zygote.pid):  # a run still in flight
                os.kill(zygote.pid, signal.SIGKILL)
                zygote.wait()
            zygote.close()


def run(cloud, name, *argv, mode="train"):
    """One run to its end: (exit code, its output)."""
    _, zygote, logs, source = cloud
    log = logs / f"{name}.log"
    started = time.perf_counter()
    code = zygote.run([*ARGS, source, f"--mode={mode}", *argv], log, ONE_DEVICE)
    print(f"{name}: exit {code} in {time.perf_counter() - started:.1f} s")
    return code, log.read_text()


def objects(emulator, prefix):
    """Names of the bucket's objects under ``prefix`` (the emulator's JSON API, nothing cached)."""
    query = urllib.parse.urlencode({"prefix": prefix})
    url = f"{emulator.url}/storage/v1/b/{emulator.bucket}/o?{query}"
    with urllib.request.urlopen(url, timeout=5) as r:
        return [item["name"] for item in json.loads(r.read()).get("items", [])]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def restore(workdir, step, item):
    """{leaf path: numpy array} of one item of checkpoint ``step`` (read from the bucket by tensorstore)."""
    tree = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / item)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def deterministic(workdir):
    """metrics.ndjson without system metrics and timings."""
    out = []
    for line in (workdir / "metrics.ndjson").read_text().splitlines():
        r = json.loads(line)
        if r["split"] != "system":
            kept = {k: v for k, v in r.items() if k not in UNTIMED}
            out.append(kept) if set(kept) - {"step", "split"} else None
    return out


@pytest.fixture(scope="module")
def runs(cloud):
    """An uninterrupted run and one killed (-9) once its save of step 8 began (usually mid-save), then
    resumed; both on the bucket."""
    emulator, zygote, logs, source = cloud
    bucket = f"gs://{emulator.bucket}"
    ref, wd = epath.Path(f"{bucket}/reference"), epath.Path(f"{bucket}/killed")
    code, out = run(cloud, "reference", f"--workdir={ref}")
    assert code == 0, out[-3000:]

    log = logs / "killed.log"
    pid = zygote.start([*ARGS, source, f"--workdir={wd}"], log, ONE_DEVICE)
    deadline, hit = time.monotonic() + 120, False
    while time.monotonic() < deadline and not hit and alive(pid):
        hit = bool(objects(emulator, "killed/checkpoints/8/"))  # the save of step 8 has begun
        if not hit:
            time.sleep(0.01)
    if hit:
        os.kill(pid, signal.SIGKILL)
    code = zygote.wait()
    assert hit and code == -signal.SIGKILL, (
        f"the run ended ({code}) before the kill:\n{log.read_text()[-3000:]}"
    )
    step8 = objects(emulator, "killed/checkpoints/8/")
    interrupted = f"killed/checkpoints/8/{COMMIT_FILE}" not in step8
    print(f"killed with {len(step8)} objects of step 8 written; save cut short: {interrupted}")
    code, out = run(cloud, "resumed", f"--workdir={wd}")
    assert code == 0, out[-3000:]
    assert "taking over the stale lock" in out
    return ref, wd, out


def test_a_killed_run_on_a_bucket_resumes_to_the_uninterrupted_bits(runs):
    ref, wd, out = runs
    resumed_from = int(out.split(" parameters from step ")[1].split()[0])
    assert resumed_from in (4, 8)  # step 8 only when its save had committed before the kill
    checkpointer = Checkpointer(wd / "checkpoints", read_only=True)
    assert checkpointer.steps() == [8, 12]  # max_to_keep=2 on the bucket too
    checkpointer.verify(STEPS, TRAIN_ITEMS)
    checkpointer.close()
    for step in (8, 12):
        assert (wd / "checkpoints" / str(step) / MANIFEST).is_file()
    assert not (wd / "checkpoints" / "4").exists()  # retention deleted its objects
    for item in ("params", "train"):
        a, b = restore(ref, STEPS, item), restore(wd, STEPS, item)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{item}/{name}")
    assert deterministic(wd) == deterministic(ref)  # one set of lines a step, equal to the reference's
    assert files.walk_files(wd / "tensorboard") and (wd / "config.json").is_file()
    assert {p.name for p in files.walk_files(wd / "cache")} == {"key.json", "train.tokens", "eval.tokens"}
    assert json.loads((wd / "data_manifest.json").read_text())["totals"]["files"] == 12
    assert not (wd / "run.lock").exists()


def test_eval_generate_and_hf_export_on_the_bucket(cloud, runs):
    ref, wd, _ = runs
    code, out = run(cloud, "eval", f"--workdir={wd}", mode="eval")
    assert code == 0, out[-3000:]
    result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert result["step"] == STEPS and (wd / f"eval_{STEPS}.json").is_file()
    code, out = run(
        cloud, "generate", f"--workdir={wd}", "--config.generate.max_new_tokens=4", mode="generate"
    )
    assert code == 0, out[-3000:]

    hf = epath.Path(f"{wd}-hf")
    export = [f"--workdir={wd}", f"--config.export.dir={hf}", "--config.export.format=hf"]
    code, out = run(cloud, "export", *export, mode="export")
    assert code == 0, out[-3000:]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer.model"} <= {
        p.name for p in files.walk_files(hf)
    }
    _, params = import_checkpoint(os.fspath(hf))  # read back from the bucket
    trained = restore(wd, STEPS, "params")
    imported = {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    assert imported.keys() == trained.keys()
    for name in trained:
        np.testing.assert_array_equal(imported[name], trained[name], err_msg=name)

    tuned = f"{wd}-tuned"  # model.init_from='hf:gs://...': weights, config and tokenizer from the bucket
    steps = ["--config.train.steps=2", "--config.checkpoint.every_steps=2"]
    code, out = run(cloud, "init_from", f"--workdir={tuned}", f"--config.model.init_from=hf:{hf}", *steps)
    assert code == 0, out[-3000:]
    assert (epath.Path(tuned) / "checkpoints" / "2" / MANIFEST).is_file()
    manifest = json.loads((epath.Path(tuned) / "data_manifest.json").read_text())
    assert manifest["tokenizer"]["path"] == os.fspath(hf)  # the export's tokenizer, read from the bucket


def test_a_corrupt_object_is_one_error_line(cloud, runs):
    _, wd, _ = runs
    listed = json.loads((wd / "checkpoints" / str(STEPS) / MANIFEST).read_text())["files"]
    name = next(n for n in sorted(listed) if n.startswith("params/") and listed[n]["bytes"] > 8)
    obj = wd / "checkpoints" / str(STEPS) / name
    data = obj.read_bytes()
    obj.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    code, out = run(cloud, "corrupt", f"--workdir={wd}", mode="eval")
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, out[-3000:]
    assert f"{name} does not match its sha256" in errors[0] and "gs://" in errors[0]
