"""Config validation: every bad key gives one `error:` line naming it and exit code 2, before any work."""

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


def test_grpo_eval_temperature_is_zero_or_more_or_minus_one():
    cfg = default_config()
    for ok in (-1.0, 0.0, 0.7):
        cfg.train.grpo.eval_temperature = ok
        validate(cfg)
    cfg.train.grpo.eval_temperature = -0.5
    with pytest.raises(UserError, match="'train.grpo.eval_temperature': must be >= 0, or -1"):
        validate(cfg)


def test_codeeval_site_packages_reaches_the_sandbox_limits():
    from codex_jax.codeeval.settings import settings_from_config

    cfg = default_config()
    assert settings_from_config(cfg).limits.site_packages is True
    cfg.codeeval.site_packages = False
    assert settings_from_config(cfg).limits.site_packages is False
