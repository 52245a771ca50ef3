"""A config file that loads a run's saved config: ``--config=<this file>:RUN`` is what
``--workdir=RUN`` alone and ``--config=RUN/config.json`` become (``codex_jax.main``), so the
``--config.KEY=V`` overrides apply to the run's own config."""

from __future__ import annotations

from pathlib import Path

from codex_jax.config.runspec import run_config
from codex_jax.files import as_path

LOADER = Path(__file__).resolve()


def get_config(run: str):
    """The config the run in ``run`` was started with (its config.json over today's defaults)."""
    return run_config(as_path(run))
