"""codex_jax.metrics.plot (`codex-jax plot`): series from metrics.ndjson and a PNG of several runs."""

from __future__ import annotations

import pytest

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


def test_figure_is_returned_for_notebooks(tmp_path):
    pytest.importorskip("matplotlib")
    fake_run(tmp_path)
    fig = tool.plot([tmp_path])
    assert [ax.get_title() for ax in fig.axes] == [name for name, _, _ in tool.PANELS]
    assert len(fig.axes[0].lines) == 2 and not (tmp_path / "metrics.png").exists()
