"""Metric writers (real files), MFU/timer arithmetic and system metrics on CPU."""

import json
import logging
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_tb_events

from codex_jax.errors import UserError
from codex_jax.metrics import (
    ConsoleWriter,
    MultiWriter,
    NdjsonWriter,
    StepTimer,
    SystemMetrics,
    TensorBoardWriter,
    create_writers,
    mfu,
    peak_flops_per_device,
    read_ndjson,
)

# ----------------------------------------------------------------------------- NDJSON


def test_ndjson_scalars_texts_hparams_histograms(tmp_path):
    path = tmp_path / "metrics.ndjson"
    w = NdjsonWriter(path)
    w.write_hparams({"model": {"num_layers": 2, "dtype": "bfloat16"}, "lr": np.float32(0.5)})
    w.write_scalars(
        10,
        {
            "train/loss": jnp.float32(2.5),
            "train/learning_rate": 1e-3,
            "train/tokens": np.int64(4096),
            "train/grad_norm": jnp.bfloat16(0.5),
            "eval/loss": float("nan"),
            "eval/perplexity": float("inf"),
            "loss_scale": np.array([2.0]),
        },
    )
    w.write_texts(10, {"eval/sample": 'def f():\n    return "x"'})
    w.write_histograms(10, {"train/grads": np.arange(10.0)}, num_buckets={"train/grads": 5})
    w.close()

    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # strict JSON, one object a line
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    hp, train, ev, nosplit, text, hist = read_ndjson(path)
    assert hp == {
        "step": None,
        "split": "hparams",
        "kind": "hparams",
        "hparams": {"model.num_layers": 2, "model.dtype": "bfloat16", "lr": 0.5},
    }
    assert train == {
        "step": 10,
        "split": "train",
        "loss": 2.5,
        "learning_rate": 1e-3,
        "tokens": 4096,
        "grad_norm": 0.5,
    }
    assert isinstance(train["tokens"], int)
    assert ev["split"] == "eval" and math.isnan(ev["loss"]) and ev["perplexity"] == math.inf
    assert json.loads(lines[2])["loss"] == "nan"  # on disk: strings
    assert nosplit == {"step": 10, "split": None, "loss_scale": 2.0}
    assert text == {
        "step": 10,
        "split": "eval",
        "kind": "text",
        "name": "sample",
        "text": 'def f():\n    return "x"',
    }
    assert hist["kind"] == "histogram" and hist["name"] == "grads" and hist["split"] == "train"
    assert hist["count"] == 10 and hist["min"] == 0.0 and hist["max"] == 9.0
    assert hist["bucket_counts"] == [2, 2, 2, 2, 2] and len(hist["bucket_edges"]) == 6


def test_ndjson_resume_drops_a_cut_line(tmp_path):
    path = tmp_path / "metrics.ndjson"
    w = NdjsonWriter(path)
    w.write_scalars(1, {"train/loss": 3.0})
    w.close()
    with open(path, "a") as f:  # a process killed in the middle of a line
        f.write('{"step": 2, "split": "tr')
    assert [r["step"] for r in read_ndjson(path)] == [1]  # readers skip the cut line
    w = NdjsonWriter(path)  # resume appending
    w.write_scalars(2, {"train/loss": 2.0})
    w.close()
    assert [(r["step"], r["loss"]) for r in read_ndjson(path)] == [(1, 3.0), (2, 2.0)]


def test_ndjson_rejects_reserved_and_non_scalar(tmp_path):
    w = NdjsonWriter(tmp_path / "m.ndjson")
    with pytest.raises(ValueError, match="step"):
        w.write_scalars(1, {"train/step": 3})
    with pytest.raises(ValueError, match="not a scalar"):
        w.write_scalars(1, {"train/loss": np.ones(3)})
    w.close()


def test_read_ndjson_reports_a_bad_middle_line(tmp_path):
    path = tmp_path / "m.ndjson"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"m.ndjson:2"):
        read_ndjson(path)


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_event_files(tmp_path):
    torch_was_loaded = "torch" in sys.modules
    w = TensorBoardWriter(tmp_path / "tb")
    w.write_scalars(3, {"train/loss": jnp.float32(1.5), "eval/loss": np.float64(2.0)})
    w.write_texts(3, {"eval/sample": "print('hi')"})
    w.write_histograms(3, {"train/grads": np.arange(100.0)}, num_buckets={"train/grads": 4})
    w.write_hparams({"model": {"num_layers": 2}, "optimizer": "adamw", "betas": (0.9, 0.95)})
    w.close()
    if not torch_was_loaded:
        assert "torch" not in sys.modules  # tensorboardX was kept from importing torch

    from tensorboardX.proto import plugin_hparams_pb2

    values = [(e.step, v) for e in read_tb_events(tmp_path / "tb") for v in e.summary.value]
    scalars = {(s, v.tag): v.simple_value for s, v in values if v.WhichOneof("value") == "simple_value"}
    assert scalars == {(3, "train/loss"): 1.5, (3, "eval/loss"): 2.0}
    text = [v for _, v in values if v.tag.startswith("eval/sample")]
    assert text[0].tensor.string_val == [b"print('hi')"]
    histo = [v.histo for s, v in values if v.tag == "train/grads"]
    assert histo[0].num == 100 and histo[0].max == 99.0
    start = [v for _, v in values if v.tag == "_hparams_/session_start_info"]
    plugin = plugin_hparams_pb2.HParamsPluginData.FromString(start[0].metadata.plugin_data.content)
    hp = plugin.session_start_info.hparams
    assert hp["model.num_layers"].number_value == 2
    assert hp["optimizer"].string_value == "adamw"
    assert hp["betas"].string_value == "[0.9, 0.95]"


def test_resumed_tensorboard_run_purges_the_interrupted_runs_later_points(tmp_path):
    """A resumed run (purge_step) marks its event file so TensorBoard drops the old points from there."""
    first = TensorBoardWriter(tmp_path / "tb")
    for step in range(1, 11):
        first.write_scalars(step, {"train/loss": float(step)})
    first.close()
    time.sleep(1.1)  # event file names hold the second they were created; readers go in name order
    resumed = TensorBoardWriter(tmp_path / "tb", purge_step=6)
    for step in range(6, 9):
        resumed.write_scalars(step, {"train/loss": 100.0 + step})
    resumed.close()
    from tensorboardX.proto import event_pb2

    starts = [e.step for e in read_tb_events(tmp_path / "tb") if e.HasField("session_log")]
    assert starts == [6] and event_pb2.SessionLog.START == 1
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    points = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert points == [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 9)]


# ----------------------------------------------------------------------------- console, factory


def test_console_lines(capsys):
    w = ConsoleWriter()
    w.write_scalars(
        10,
        {"train/loss": 2.3, "train/learning_rate": 1e-3, "train/tokens_per_second": 466000.4},
    )
    w.write_scalars(20, {"eval/loss": np.float32(2.5), "eval/tokens": 12})
    w.write_texts(20, {"eval/sample": "x = 1"})
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "step 10 train loss=2.3000 learning_rate=1.0e-03 tokens_per_second=466000",
        "step 20 eval loss=2.5000 tokens=12",
        "step 20 eval/sample: x = 1",
    ]


def test_create_writers_and_multiwriter(tmp_path, capsys):
    writers = create_writers(" tensorboard, ndjson ,console", tmp_path, is_main_process=True)
    assert [type(w) for w in writers.writers] == [TensorBoardWriter, NdjsonWriter, ConsoleWriter]
    writers.write_scalars(1, {"train/loss": 4.0})
    with pytest.raises(NotImplementedError, match="write_images"):
        writers.write_images(1, {"train/img": np.zeros((2, 2, 3))})
    writers.close()
    assert read_ndjson(tmp_path / "metrics.ndjson") == [{"step": 1, "split": "train", "loss": 4.0}]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert capsys.readouterr().out == "step 1 train loss=4.0000\n"


def test_create_writers_other_process_writes_nothing(tmp_path):
    writers = create_writers("tensorboard,ndjson", tmp_path / "w", is_main_process=False)
    assert isinstance(writers, MultiWriter) and writers.writers == ()
    writers.write_scalars(1, {"train/loss": 1.0})
    writers.close()
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("main", [True, False])
def test_create_writers_unknown_name(tmp_path, main):
    with pytest.raises(UserError, match=r"logging\.writers.*'wandb'"):
        create_writers("ndjson,wandb", tmp_path, is_main_process=main)


# ----------------------------------------------------------------------------- perf


@pytest.mark.parametrize(
    "kind, flops",
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5", 459e12),
        ("TPU v5p", 459e12),
        ("TPU v6 lite", 918e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100-PCIE-40GB", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("cpu", None),
        ("TPU v4 lite", None),
    ],
)
def test_peak_flops_per_device(kind, flops):
    assert peak_flops_per_device(kind) == flops


def test_mfu_arithmetic():
    # 8 H100s at 989e12 each; 6e9 FLOPs/token at 400k tokens/s = 2.4e15 FLOP/s.
    assert mfu(6e9, 400_000, 8, "NVIDIA H100 80GB HBM3") == pytest.approx(2.4e15 / (8 * 989e12))
    assert mfu(6e9, 400_000, 1, "cpu") is None


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_step_timer_math():
    clock = FakeClock()
    timer = StepTimer(clock=clock)
    for wait, compute in [(0.5, 1.5), (0.0, 1.0), (1.0, 5.0)]:  # step times 2, 1, 6
        timer.data_start()
        clock.now += wait
        timer.data_end()
        clock.now += compute
        timer.step_end(tokens=1000)
    s = timer.summary()
    assert s == {
        "step_time_median": 2.0,
        "step_time_mean": 3.0,
        "tokens_per_second": 3000 / 9,
        "data_wait_fraction": 1.5 / 9,
        "steps": 3,
    }
    assert timer.summary() == {}  # window reset
    clock.now += 50.0  # an eval pause, excluded by start()
    timer.start()
    clock.now += 2.0
    timer.step_end(tokens=10)
    assert timer.summary()["step_time_mean"] == 2.0


def test_step_timer_real_clock():
    timer = StepTimer()
    timer.data_start()
    time.sleep(0.01)
    timer.data_end()
    time.sleep(0.01)
    timer.step_end(tokens=100)
    s = timer.summary()
    assert s["step_time_mean"] >= 0.02 and 0.1 < s["data_wait_fraction"] < 0.9
    assert s["tokens_per_second"] == pytest.approx(100 / s["step_time_mean"])


def test_step_timer_misuse():
    with pytest.raises(RuntimeError, match="data_start"):
        StepTimer().data_end()
    with pytest.raises(RuntimeError, match="step_end"):
        StepTimer().step_end(1)


# ----------------------------------------------------------------------------- system


def test_system_metrics(caplog):
    caplog.set_level(logging.INFO, logger="codex_jax.metrics.system")
    system = SystemMetrics()
    first, second = system.collect(), system.collect()
    system.close()
    for metrics in (first, second):
        assert {
            "system/cpu_percent",
            "system/ram_used_gb",
            "system/process_rss_gb",
            "system/accelerator_memory_available",
            "system/nvml_available",
        } <= set(metrics)
        assert metrics["system/ram_used_gb"] > 0 and metrics["system/process_rss_gb"] > 0
    if jax.default_backend() != "cpu":  # on an accelerator the memory stats are reported
        assert first["system/accelerator_memory_available"] == 1.0
        assert "system/accelerator_memory_used_gb" in first
        return
    assert first["system/accelerator_memory_available"] == 0.0  # CPU reports no memory stats
    assert first["system/nvml_available"] == 0.0
    # CPU never reports them: an INFO line (a warning would break the progress bar), once, not per call
    said = [r for r in caplog.records if "memory stats" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert any("NVML" in r.getMessage() for r in caplog.records)
