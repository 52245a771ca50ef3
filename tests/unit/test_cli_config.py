"""``codex-jax config print|validate|diff``, in process: the resolved config and what differs from the
defaults, a run's own errors (exit 2) without any work, and two workdirs' configs compared."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import CONFIGS

from codex_jax import api, cli, cli_config
from codex_jax.config.schema import SCHEMA
from codex_jax.errors import UserError

TINY = f"--config={CONFIGS / 'tiny.py'}"


@pytest.fixture(autouse=True)
def _argv(monkeypatch, tmp_path):
    """Parsing sets sys.argv (ml_collections reads overrides from it): restored after each test; the
    working directory is an empty folder, so that a file anything writes shows."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.chdir(tmp_path)


def config(capsys, *argv):
    """(exit code, stdout, stderr) of ``codex-jax config ARGV...``."""
    try:
        code = cli_config.main(list(argv))
    except SystemExit as e:  # a parse error exits itself, as in a run
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_print_shows_every_key_and_marks_those_that_differ_from_the_defaults(capsys):
    code, out, err = config(capsys, "print", TINY, "--config.train.steps=3", "--config.model.family=llama")
    lines = out.splitlines()
    assert code == 0 and not err
    assert len(lines) == len(SCHEMA) + 1
    assert "* train.steps = 3  # default 300" in lines
    assert "* model.family = 'llama'  # default 'gpt2'" in lines
    assert "  seed = 0" in lines and "  data.source = 'stdlib'" in lines  # tiny keeps these
    changed = [line for line in lines if line.startswith("* ")]
    assert lines[-1] == f"{len(changed)} of {len(SCHEMA)} keys differ from the defaults (marked *)"
    code, out, _ = config(capsys, "print", TINY, "--changed")
    assert code == 0 and "* train.steps = 20  # default 300" in out and "  seed = 0" not in out
    assert len(out.splitlines()) == len(changed) - 1 + 1  # the overrides forgotten: llama no longer differs


@pytest.mark.parametrize(
    "argv, message",
    [
        (["print"], "error: --config is required (e.g. --config=configs/base.py)"),
        (
            ["print", TINY, "--config.train.stepz=3"],
            "error: --config.train.stepz=3: unknown config key 'stepz'",
        ),
        (
            ["print", TINY, "--config.train.steps=many"],
            "error: flag --config.train.steps=many: invalid literal",
        ),
        (
            ["print", "--config=nope.py"],
            "error: --config=nope.py: no such config file (packaged configs: base",
        ),
        (["print", TINY, "extra"], "error: codex-jax config print: unexpected arguments extra"),
        (
            ["validate", TINY, "--workdir=x", "more"],
            "error: codex-jax config validate: unexpected arguments more",
        ),
        (["check", TINY], "error: codex-jax config: unknown action 'check' (print, validate or diff)"),
    ],
)
def test_bad_arguments_are_one_error_line_and_exit_2(capsys, argv, message):
    code, out, err = config(capsys, *argv)
    assert code == 2 and not out and err.startswith(message) and err.count("\n") == 1, err


def test_validate_says_ok_or_stops_with_the_runs_own_error_and_does_no_work(capsys, tmp_path):
    code, out, err = config(capsys, "validate", TINY)
    assert (code, out, err) == (0, f"ok: {CONFIGS / 'tiny.py'}\n", "")
    for override in ("train.learning_rate=2", "train.hooks=no_such_hook", "train.warmup_steps=100"):
        key, value = override.split("=")
        code, out, err = config(capsys, "validate", TINY, f"--config.{override}")
        with pytest.raises(UserError) as run_error:  # what the run stops with, before any work
            api.train(api.load_config("tiny", {key: type(SCHEMA[key][0])(value)}), tmp_path / "run")
        assert (code, out, err) == (2, "", f"error: {run_error.value}\n")
        assert f"config key '{key}'" in err
    assert list(tmp_path.iterdir()) == []  # no workdir, no runs/, nothing written


def _workdir(path, **overrides):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(api.load_config("tiny", overrides).to_dict()))
    return str(path)


def test_diff_prints_the_keys_that_differ_and_exits_like_diff(capsys, tmp_path):
    a = _workdir(tmp_path / "a")
    b = _workdir(tmp_path / "b", **{"train.steps": 40, "generate.prompt": "def f():"})
    code, out, err = config(capsys, "diff", a, a)
    assert (code, out, err) == (0, f"same config ({len(SCHEMA)} keys)\n", "")
    code, out, _ = config(capsys, "diff", a, b)
    assert code == 1
    assert out.splitlines() == [
        f"--- {a}/config.json",
        f"+++ {b}/config.json",
        "train.steps: 20 -> 40",
        "generate.prompt: 'def fibonacci(n):' -> 'def f():'",
        f"2 of {len(SCHEMA)} keys differ",
    ]
    older = json.loads((tmp_path / "b" / "config.json").read_text())
    del older["train"]["steps"]  # a run of a version without the key
    (tmp_path / "b" / "config.json").write_text(json.dumps(older))
    assert "train.steps: 20 -> (absent)" in config(capsys, "diff", a, b)[1]


def test_diff_errors_name_the_workdir(capsys, tmp_path):
    a = _workdir(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[1, 2]")
    cases = {
        (a, str(tmp_path / "nope")): f"error: {tmp_path / 'nope'}: no such workdir",
        (str(tmp_path / "empty"), a): f"error: {tmp_path / 'empty'}: has no config.json",
        (a, str(tmp_path / "broken")): f"error: {tmp_path / 'broken' / 'config.json'}: cannot read",
        (a, str(tmp_path / "list")): f"error: {tmp_path / 'list' / 'config.json'}: not a config",
        (a,): "error: codex-jax config diff: expected two workdirs",
        (a, a, a): "error: codex-jax config diff: expected two workdirs",
        (a, "--json"): "error: codex-jax config diff: expected two workdirs",
    }
    for args, message in cases.items():
        code, out, err = config(capsys, "diff", *args)
        assert code == 2 and not out and err.startswith(message) and err.count("\n") == 1, err


def test_the_console_script_dispatches_config(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["codex-jax", "config", "validate", TINY])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("ok: ")
    with pytest.raises(SystemExit) as done:
        cli.main(["codex-jax", "config", "--help"])
    assert done.value.code == 0 and "codex-jax config diff RUN_A RUN_B" in capsys.readouterr().out
