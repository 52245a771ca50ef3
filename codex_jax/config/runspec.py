"""Where a run's weights come from, parsed once: ``model.init_from`` ('hf:FOLDER' / 'workdir:RUN'),
``lora.init_from`` ('peft:FOLDER'), and the config.json of a run directory.

Every module that needs one of these reads it from :class:`RunSpec` or :func:`run_config`, so the
prefixes and the "config.json over today's defaults" rule are written down once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ml_collections

from codex_jax.config.schema import SCHEMA, default_config, flatten
from codex_jax.errors import UserError
from codex_jax.files import as_path, is_remote, read_json

RUN_CONFIG = "config.json"  # the config a run was started with, in its workdir


def _after(value: str, prefix: str) -> Path | None:
    """The path after ``prefix`` in ``value`` (user-expanded; a ``gs://`` URI as an epath), or None."""
    if not value.startswith(prefix):
        return None
    rest = value[len(prefix) :]
    return as_path(rest) if is_remote(rest) else Path(rest).expanduser()


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The parsed ``*.init_from`` keys of a run config (paths user-expanded)."""

    init_from: str = ""  # model.init_from as written ('': random init)
    hf_folder: Path | None = None  # model.init_from='hf:FOLDER': a local Hugging Face checkpoint
    base_run: Path | None = None  # model.init_from='workdir:RUN': another run's latest checkpoint
    peft_folder: Path | None = None  # lora.init_from='peft:FOLDER': a PEFT LoRA adapter

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> RunSpec:
        """The spec of a (validated) run config."""
        model_from = cfg.model.init_from
        return cls(
            init_from=model_from,
            hf_folder=_after(model_from, "hf:"),
            base_run=_after(model_from, "workdir:"),
            peft_folder=_after(cfg.lora.init_from, "peft:"),
        )

    def base_config(self) -> ml_collections.ConfigDict:
        """The config of the base run ``RUN`` of ``model.init_from='workdir:RUN'``."""
        assert self.base_run is not None  # a validated init_from is 'hf:FOLDER' or 'workdir:RUN'
        if not (self.base_run / RUN_CONFIG).is_file():
            raise UserError(f"config key 'model.init_from': {self.base_run} has no {RUN_CONFIG} (not a run)")
        return run_config(self.base_run)

    def inherited_tokenizer(self) -> str:
        """The tokenizer a ``'workdir:RUN'`` run inherits: RUN's ``data.tokenizer``, what RUN itself
        inherited, its ``hf:`` folder, or ``RUN/tokenizer``; '' for other runs."""
        if self.base_run is None:
            return ""
        base = self.base_config()
        spec = RunSpec.from_config(base)
        inherited = base.data.tokenizer or spec.inherited_tokenizer()
        return inherited or str(spec.hf_folder or self.base_run / "tokenizer")


def saved_config(run: Path) -> dict:
    """The config.json of the run in ``run`` as written (a UserError when missing or unreadable)."""
    return read_json(run / RUN_CONFIG, "run's config")


def run_config(run: Path) -> ml_collections.ConfigDict:
    """The config of the run in ``run``: its config.json's keys over today's defaults (keys a newer
    version dropped are ignored; keys it lacks keep their defaults)."""
    cfg = default_config()
    for key, value in flatten(saved_config(run)).items():
        if key in SCHEMA:
            set_key(cfg, key, value)
    return cfg


def set_key(cfg: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """``cfg[key] = value`` for a dotted key, as a UserError naming the key when it cannot be."""
    *parents, leaf = key.split(".")
    node = cfg
    try:
        for name in parents:
            node = node[name]
        node[leaf] = value
    except (KeyError, AttributeError):
        raise UserError(
            f"config key '{key}': unknown key (see the config reference: docs/reference/config.md)"
        ) from None
    except TypeError as e:
        raise UserError(f"config key '{key}': {e}") from None
