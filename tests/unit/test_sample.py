"""The sample a run ends with (and ``--mode=generate``): drawn with ``generate.temperature``, ``top_k`` and
``seed`` (by default 0.8, 40 and 0), the same text for the same seed; ``generate.temperature=0`` is greedy.
The params are the legacy fixture run's step 4."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from codex_jax import api
from codex_jax.config.schema import SCHEMA, default_config
from codex_jax.data.pipeline import prepare_data
from codex_jax.generate import complete, sample
from codex_jax.setup.weights import restore_params

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_run"
PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, params, tokenizer) of the fixture run's checkpoint 4."""
    root = tmp_path_factory.mktemp("sample")
    shutil.copytree(FIXTURE / "corpus", root / "corpus")
    shutil.copytree(FIXTURE / "run", root / "run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # data.source is the relative 'corpus/*.py'
        cfg = api.workdir_config("run")
        model, params, step = restore_params(cfg, Path("run"))
        tokenizer = prepare_data(cfg, Path("run"), write=False).tokenizer
    assert step == 4
    return model, params, tokenizer


def _settings(**changes):
    settings = default_config().generate
    settings.max_new_tokens = 16
    settings.update(changes)
    return settings


def test_the_default_sample_is_drawn_and_the_same_for_the_same_seed(trained):
    assert (SCHEMA["generate.temperature"][0], SCHEMA["generate.top_k"][0]) == (0.8, 40)
    texts = [sample(*trained, PROMPT, _settings(seed=seed)) for seed in (0, 0, 1, 2, 3)]
    assert texts[0] == texts[1] and all(t.startswith(PROMPT) for t in texts)
    assert len(set(texts)) > 2  # other seeds, other draws


def test_greedy_is_one_key_away(trained):
    greedy = [sample(*trained, PROMPT, _settings(temperature=0.0, seed=seed)) for seed in (0, 5)]
    model, params, tokenizer = trained
    assert greedy[0] == greedy[1] == PROMPT + complete(model, params, tokenizer, PROMPT, 16)
