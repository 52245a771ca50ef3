"""Two real processes joined with jax.distributed on 127.0.0.1 (gloo) match one process, same devices."""

import os
import socket
import subprocess
import sys

import numpy as np
from conftest import CONFIGS, REPO, read_metrics, run_cli, xla_flags

COMMON = [
    "--config.model.num_layers=1",  # one process or two, the same run: any depth shows it
    "--config.train.steps=8",
    "--config.checkpoint.every_steps=4",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
    "--config.model.dropout=0.0",
]


def _free_port(first: int = 0) -> int:
    """A free TCP port on 127.0.0.1: any (``first=0``), or the first free one from ``first`` on."""
    for port in [0] if first == 0 else range(first, 65536):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _dist_flags(port: int, i: int) -> list[str]:
    """The README's explicit multi-host flags for process ``i`` of 2."""
    return [
        f"--config.dist.coordinator_address=127.0.0.1:{port}",
        "--config.dist.num_processes=2",
        f"--config.dist.process_id={i}",
    ]


def _slurm_env(port: int, i: int) -> dict[str, str]:
    """What ``srun --ntasks=2`` sets for task ``i`` (jax derives the coordinator port from the job id)."""
    return {
        "SLURM_JOB_ID": str(port - 61440),  # port = job id % 4096 + 61440
        "SLURM_STEP_NODELIST": "127.0.0.1",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": str(i),
        "SLURM_LOCALID": str(i),
    }


def _run_two_processes(workdir, *overrides, slurm=False):
    port = _free_port(61440 if slurm else 0)
    env = {
        **os.environ,
        "XLA_FLAGS": xla_flags(2),
        "JAX_PLATFORMS": "cpu",
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "codex_jax.main",
                f"--config={CONFIGS / 'tiny.py'}",
                f"--workdir={workdir}",
                *COMMON,
                *overrides,
                *([] if slurm else _dist_flags(port, i)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, **_slurm_env(port, i)} if slurm else env,
            cwd=REPO,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outs


def test_two_processes_match_one_process_and_resume(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    run_cli(single, *COMMON, devices=4)
    outs = _run_two_processes(multi, "--config.train.stop_after=4")
    assert "process 1 of 2" in outs[1][1]
    # Resumed from step 4 on both processes, launched as ``srun`` would: no dist.* keys, jax finds its
    # peers from SLURM_* (the README's Slurm recipe).
    outs = _run_two_processes(multi, slurm=True)
    assert "process 1 of 2: 2 local device(s), 4 in all" in outs[1][1]
    a, b = read_metrics(single), read_metrics(multi)
    assert sorted(b) == list(range(1, 9))
    np.testing.assert_allclose(
        [b[s]["loss"] for s in range(1, 9)], [a[s]["loss"] for s in range(1, 9)], rtol=1e-5
    )
    assert (multi / "checkpoints" / "8").is_dir()


# A run through the Python API whose hook fails on process 1 only (argv: workdir, port, process id).
FAILING_HOOK = """
import sys

import jax

from codex_jax import api


class FailOnProcess1:
    def on_step_end(self, step, metrics):
        if jax.process_index() == 1 and step == 2:
            raise RuntimeError("disk full")


workdir, port, i = sys.argv[1:]
dist = {"dist.coordinator_address": f"127.0.0.1:{port}", "dist.num_processes": 2, "dist.process_id": int(i)}
common = {"train.steps": 4, "checkpoint.every_steps": 1, "train.eval_every": 100}
api.train(api.load_config("configs/tiny.py", {**common, **dist}), workdir, hooks=[FailOnProcess1()])
"""


def test_a_hook_failing_on_one_process_stops_every_process(tmp_path):
    """Process 1's hook fails at step 2: both processes stop after step 2 with an error naming the hook
    (or its process) and the last checkpoint, instead of process 0 waiting for process 1 forever."""
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags(2), "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-c", FAILING_HOOK, str(tmp_path / "run"), str(port)]
    procs = [
        subprocess.Popen([*argv, str(i)], stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        for i in range(2)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], errs
    assert "hook FailOnProcess1 failed at step 2: RuntimeError: disk full" in errs[1]
    assert "hook of process 1 failed at step 2" in errs[0]
    for err in errs:
        assert "the last checkpoint is step 2" in err
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == [
        "1",
        "2",
    ]


def test_tpu_pod_slice_is_detected(monkeypatch):
    """On a multi-host TPU slice (the README's gcloud recipe) jax.distributed finds its peers itself."""
    from codex_jax import distributed

    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1v-n-0,t1v-n-1")
    assert distributed._cluster_detected()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # a single-host slice: nothing to join
    assert not distributed._cluster_detected()
