"""setup/resume.check_compatible: which changed keys refuse a checkpoint, which are noted, which are quiet."""

from pathlib import Path

import pytest

from codex_jax.config import default_config
from codex_jax.errors import UserError
from codex_jax.setup.resume import check_compatible


def _saved(**changes) -> dict:
    cfg = default_config()
    for key, value in changes.items():
        section, leaf = key.split(".")
        cfg[section][leaf] = value
    return {"config": cfg.to_dict()}


def test_training_keys_are_noted_other_modes_keys_are_quiet_shape_keys_refused(capsys):
    now = default_config()
    check_compatible(
        _saved(**{"train.steps": 7, "codeeval.num_samples": 9, "generate.top_k": 3}), now, Path("c")
    )
    err = capsys.readouterr().err
    assert f"note: train.steps changed on resume: 7 -> {now.train.steps}" in err
    assert "codeeval" not in err and "generate" not in err
    with pytest.raises(UserError, match="saved with model.d_model=64"):
        check_compatible(_saved(**{"model.d_model": 64}), now, Path("c"))
