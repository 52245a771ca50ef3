"""``codex-jax`` subcommands and ``python -m codex_jax.main`` run for real: what they print and their
exit codes (configs, config errors, plot, safety scan)."""

from __future__ import annotations

import json
import struct

import pytest
from conftest import run_python
from test_plot import fake_run, tool
from test_safety import AWS, GH, PRIVATE, SECRETS

from codex_jax.errors import UserError


def test_configs_command_lists_packaged_configs():
    out = run_python(["-m", "codex_jax.cli", "configs"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("base ") and "Seconds-scale config" in out.stdout
    bad = run_python(["-m", "codex_jax.cli", "configs", "--x"])
    assert bad.returncode == 2 and bad.stderr.startswith("error: codex-jax configs: unexpected argument")


def _cli(*args):
    return run_python(["-m", "codex_jax.main", "--config=configs/tiny.py", *args], timeout=120)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("--config.train.nonsense=1", "nonsense"),
        ("--config.train.steps=abc", "train.steps"),
        ("--config.train.steps=-3", "'train.steps': must be > 0"),
    ],
)
def test_cli_errors_are_one_line_exit_2(override, needle, tmp_path):
    result = _cli(override, f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and needle in lines[-1], result.stderr
    assert not (tmp_path / "w").exists()


def test_plot_of_two_runs_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    for name, scale, eval_only in (("a", 1.0, False), ("b", 0.8, True)):
        (tmp_path / name).mkdir()
        fake_run(tmp_path / name, scale, eval_only)
    out = tmp_path / "plots" / "runs.png"
    cmd = [
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
    result = run_python(cmd, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 1000 and height > 300


def test_missing_workdir_is_reported(tmp_path):
    with pytest.raises(UserError, match="metrics.ndjson not found"):
        tool.load_runs([str(tmp_path / "nope")])
    result = run_python(["-m", "codex_jax.cli", "plot", str(tmp_path / "nope")], timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "not found" in result.stderr


def test_scan_command_prints_findings_without_secrets(tmp_path):
    (tmp_path / "leak.py").write_text("x = 1\n" + "".join(SECRETS.values()) + PRIVATE)
    (tmp_path / "clean.py").write_text("print('hi')\n")
    (tmp_path / "blob.bin").write_bytes(b"\0\1" + AWS.encode())
    cmd = ["-m", "codex_jax.cli", "safety", "scan", str(tmp_path)]
    out = run_python(cmd, timeout=120)
    assert out.returncode == 1, out.stderr
    findings = [json.loads(line) for line in out.stdout.splitlines()]
    assert {f["rule"] for f in findings} == {*SECRETS, "private-key"}
    assert all(f["file"].endswith("leak.py") and f["line"] >= 2 for f in findings)
    for secret in (AWS, GH, "correct-horse", "jane.doe", "MIIEow"):
        assert secret not in out.stdout + out.stderr
    assert "1 skipped" in out.stderr
    clean = run_python([*cmd[:-1], str(tmp_path / "clean.py")], timeout=120)
    assert clean.returncode == 0 and clean.stdout == ""
    missing = run_python([*cmd[:-1], str(tmp_path / "nope")], timeout=120)
    assert missing.returncode == 2 and "no such file" in missing.stderr
