"""GRPO reward plugins from a real installed distribution (a ``.dist-info`` with ``codex_jax.rewards``
entry points on sys.path): they add to the tests' reward; one that raises adds 0 and is counted."""

from __future__ import annotations

import numpy as np
import pytest

from codex_jax import cli_plugins, plugins
from codex_jax.errors import UserError
from codex_jax.posttrain.grpo import _extra_rewards
from codex_jax.posttrain.rewards import reward_functions

MODULE = """
def short(prompt, completion, passed):
    return 1.0 / (1 + len(completion)) + (0.5 if passed else 0.0)


def broken(prompt, completion, passed):
    if "x" in completion:
        raise RuntimeError("cannot score this")
    return float("nan") if completion == "nan" else 0.25
"""


@pytest.fixture
def installed(tmp_path, monkeypatch):
    (tmp_path / "myrewards.py").write_text(MODULE)
    info = tmp_path / "my_rewards-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rewards\nVersion: 0.1\n")
    points = "[codex_jax.rewards]\nshort = myrewards:short\nbroken = myrewards:broken\nmissing = nomodule:f\n"
    (info / "entry_points.txt").write_text(points)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reload()
    yield
    plugins.reload()


def test_reward_plugins_add_up_and_a_failing_one_adds_zero(installed):
    fns = reward_functions("short, broken")
    completions = [([1], "ab"), ([2], "x"), ([3], "nan"), ([4], "")]
    extra, errors = _extra_rewards(fns, ["p"] * 4, completions, np.array([1.0, 0.0, 0.0, 1.0]))
    expected = [1 / 3 + 0.5 + 0.25, 1 / 2, 1 / 4, 1.0 + 0.5 + 0.25]
    np.testing.assert_allclose(extra, expected, rtol=1e-6)
    assert errors == 2  # the raise and the NaN
    assert reward_functions("") == []
    with pytest.raises(UserError, match="'train.grpo.rewards': no reward 'nope' is installed"):
        reward_functions("nope")
    with pytest.raises(UserError, match="'train.grpo.rewards': reward 'missing' failed to load"):
        reward_functions("missing")
    listed = cli_plugins.report()["codex_jax.rewards"]  # what `codex-jax plugins` prints
    assert sorted(listed["loaded"]) == ["broken", "short"] and list(listed["failed"]) == ["missing"]
