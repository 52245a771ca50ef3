"""Config validation: every bad key gives one `error:` line naming it and exit code 2, before any work."""

import subprocess
import sys

import pytest

from codex_jax.config.schema import SCHEMA, default_config
from codex_jax.config.validation import validate
from codex_jax.errors import UserError


def test_default_config_is_valid_and_complete():
    cfg = default_config()
    validate(cfg)
    from codex_jax.config.schema import flatten

    assert set(flatten(cfg)) == set(SCHEMA)


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("train.steps", 0, "'train.steps': must be > 0"),
        ("model.family", "bert", "'model.family': must be one of gpt2, llama"),
        ("model.num_kv_heads", 3, "'model.num_kv_heads': must divide model.num_heads=4"),
        ("data.eval_fraction", 1.5, "'data.eval_fraction'"),
        ("train.warmup_steps", 10_000, "'train.warmup_steps'"),
        ("eval.step", "best-ish", "'eval.step'"),
        ("logging.writers", "tensorboard,carrier-pigeon", "'logging.writers'"),
    ],
)
def test_invalid_values_name_the_key(key, value, needle):
    cfg = default_config()
    section, leaf = key.split(".")
    cfg[section][leaf] = value
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        validate(cfg)


def test_batch_must_divide_devices():
    cfg = default_config()
    cfg.data.batch_size = 6
    with pytest.raises(UserError, match="'data.batch_size': must be divisible by the 4 devices"):
        validate(cfg, num_devices=4)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "codex_jax.main", "--config=configs/tiny.py", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


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


def test_readme_config_reference_is_current():
    from pathlib import Path

    from codex_jax.config.schema import reference_table

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert reference_table() in readme, "run: python tools/gen_config_reference.py"
