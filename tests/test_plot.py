"""tools/plot_metrics.py: series from metrics.ndjson and a PNG of several runs."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys

import pytest
from conftest import REPO

from codex_jax.metrics import NdjsonWriter


def load_tool():
    spec = importlib.util.spec_from_file_location("plot_metrics", REPO / "tools" / "plot_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(workdir, scale=1.0, eval_only=False):
    w = NdjsonWriter(workdir / "metrics.ndjson")
    w.write_hparams({"train": {"steps": 30}})
    for step in range(0, 31, 10):
        w.write_scalars(step, {"eval/loss": scale * (6 - step / 10)})
        if step and not eval_only:
            w.write_scalars(
                step,
                {
                    "train/loss": scale * (6.5 - step / 10),
                    "train/learning_rate": 1e-3,
                    "train/tokens_per_second": 1000.0 + step,
                },
            )
    w.write_texts(30, {"sample": "def f(): pass"})
    w.close()


def test_series_keeps_the_last_value_of_a_step(tmp_path):
    tool = load_tool()
    fake_run(tmp_path)
    w = NdjsonWriter(tmp_path / "metrics.ndjson")
    w.write_scalars(20, {"train/loss": 0.5})  # a resumed run logs step 20 again
    w.close()
    records = tool.load_runs([str(tmp_path)])[tmp_path.name]
    assert tool.series(records, "train", "loss") == ([10, 20, 30], [5.5, 0.5, 3.5])
    assert tool.series(records, "eval", "loss")[0] == [0, 10, 20, 30]
    assert tool.series(records, "train", "mfu") == ([], [])


def test_plot_of_two_runs_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    for name, scale, eval_only in (("a", 1.0, False), ("b", 0.8, True)):
        (tmp_path / name).mkdir()
        fake_run(tmp_path / name, scale, eval_only)
    out = tmp_path / "plots" / "runs.png"
    cmd = [
        sys.executable,
        str(REPO / "tools" / "plot_metrics.py"),
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "--out",
        str(out),
        "--title",
        "two runs",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 1000 and height > 300


def test_missing_workdir_is_reported(tmp_path):
    with pytest.raises(SystemExit, match="metrics.ndjson not found"):
        load_tool().load_runs([str(tmp_path / "nope")])
