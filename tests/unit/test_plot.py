"""codex_jax.metrics.plot (`codex-jax plot`): series from metrics.ndjson and a PNG of several runs."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from codex_jax.errors import UserError
from codex_jax.metrics import NdjsonWriter
from codex_jax.metrics import plot as tool


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
        "-m",
        "codex_jax.cli",
        "plot",
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
    with pytest.raises(UserError, match="metrics.ndjson not found"):
        tool.load_runs([str(tmp_path / "nope")])
    cmd = [sys.executable, "-m", "codex_jax.cli", "plot", str(tmp_path / "nope")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "not found" in result.stderr


def test_figure_is_returned_for_notebooks(tmp_path):
    pytest.importorskip("matplotlib")
    fake_run(tmp_path)
    fig = tool.plot([tmp_path])
    assert [ax.get_title() for ax in fig.axes] == [name for name, _, _ in tool.PANELS]
    assert len(fig.axes[0].lines) == 2 and not (tmp_path / "metrics.png").exists()
