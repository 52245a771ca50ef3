"""Two real processes joined with jax.distributed on 127.0.0.1 (gloo) match one process, same devices."""

import os
import socket
import subprocess
import sys

import numpy as np
from conftest import REPO, read_metrics, run_cli

COMMON = [
    "--config.train.steps=8",
    "--config.checkpoint.every_steps=4",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
    "--config.model.dropout=0.0",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(workdir, *overrides):
    port = _free_port()
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "codex_jax.main",
                f"--config={REPO / 'configs/tiny.py'}",
                f"--workdir={workdir}",
                *COMMON,
                *overrides,
                f"--config.dist.coordinator_address=127.0.0.1:{port}",
                "--config.dist.num_processes=2",
                f"--config.dist.process_id={i}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
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
    _run_two_processes(multi)  # resumes from step 4 on both processes
    a, b = read_metrics(single), read_metrics(multi)
    assert sorted(b) == list(range(1, 9))
    np.testing.assert_allclose(
        [b[s]["loss"] for s in range(1, 9)], [a[s]["loss"] for s in range(1, 9)], rtol=1e-5
    )
    assert (multi / "checkpoints" / "8").is_dir()
