"""Where a run resumes from, and the checks that refuse a workdir or checkpoint it cannot continue.

All of them run before anything in the workdir is written: a refused resume leaves it untouched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import ml_collections

from codex_jax.checkpoint import TRAIN_ITEMS
from codex_jax.compute.optim import opt_state_layout
from codex_jax.config.paths import keep_saved_forms, same_after_resolving
from codex_jax.config.runspec import RUN_CONFIG, saved_config
from codex_jax.config.schema import flatten
from codex_jax.errors import UserError
from codex_jax.files import write_text_atomic
from codex_jax.models import quant
from codex_jax.setup import adapters
from codex_jax.setup.checkpoints import open_checkpoints
from codex_jax.setup.model import SHAPE_KEYS

# Keys that fix the parameter shapes or the token stream: a checkpoint saved with others is refused.
_FIXED_KEYS = (
    "model.",
    "data.seq_len",
    "data.source",
    "data.mixture",
    "data.tokenizer",
    "data.max_files",
    "data.eval_fraction",
    "data.safety_policy",
    "lora.rank",
    "lora.targets",
    "lora.experts",
    "lora.init_from",
)
_FREE_MODEL_KEYS = (
    "model.dropout",
    "model.remat",
    "model.attention_impl",
    "model.grad_barriers",
    "model.dtype",
    "model.loss_chunk",
)
# Keys only other modes read (eval-code, export, sampling): a change is no news to a resumed run.
_OTHER_MODES = ("codeeval.", "export.", "generate.")


_QUANT_KEYS = ("lora.base_dtype", "lora.quant_block_size", "lora.quantize_embeddings")


def _quantized(saved: dict) -> bool:
    return saved.get("lora", {}).get("base_dtype") in quant.FORMATS


_NEW_RUN = "use a new --workdir"
# What a follow-up command (eval, generate, export...) given a different config should do instead.
FOLLOWUP = "leave out --config: --workdir alone uses the run's own config"


def check_compatible(
    meta: dict, cfg: ml_collections.ConfigDict, path: Path, notes: bool = True, advice: str = _NEW_RUN
) -> None:
    """Refuses a checkpoint (or workdir config.json) whose model or data shape differs (the error
    ends with ``advice``).

    Training, parallelism and logging keys may change on resume (``train.steps``, the schedule,
    the device count and mesh...); each change is one ``note:`` line on stderr (with ``notes``).
    """
    saved = meta.get("config")
    if not isinstance(saved, dict):
        raise UserError(f"checkpoint {path}: no saved config in its metadata")
    now = flatten(cfg)
    ignored = {f"model.{k}" for k in SHAPE_KEYS} if cfg.model.get("init_from") else set()
    for key, old in flatten(saved).items():
        new = now.get(key)
        if new == old or key in ignored or same_after_resolving(key, old, new):
            continue
        if key in _QUANT_KEYS and (old in quant.FORMATS or new in quant.FORMATS or _quantized(saved)):
            raise UserError(
                f"{path}: saved with {key}={old!r}, config says {new!r}; a quantized (QLoRA) base resumes "
                f"only as it was saved ({advice})"
            )
        if key.startswith(_FIXED_KEYS) and key not in _FREE_MODEL_KEYS:
            raise UserError(f"{path}: saved with {key}={old!r}, config says {new!r} ({advice})")
        if notes and not key.startswith(_OTHER_MODES):
            print(f"note: {key} changed on resume: {old!r} -> {new!r}", file=sys.stderr)


def find_resume(cfg: ml_collections.ConfigDict, workdir: Path) -> int | None:
    """The checkpoint step to resume from (None: a fresh start), checked before anything is written.

    Refuses (UserError, workdir untouched) a workdir whose config.json or checkpoint disagrees on
    the model or data, and a corrupt newest checkpoint unless ``checkpoint.on_corrupt='previous'``.
    """
    check_workdir_config(cfg, workdir)
    checkpointer = open_checkpoints(workdir, lora=adapters.enabled(cfg))
    try:
        step = checkpointer.select("latest", on_corrupt=cfg.checkpoint.on_corrupt, items=TRAIN_ITEMS)
        if step is not None:
            meta = checkpointer.restore_meta(step)
            check_compatible(meta, cfg, checkpointer.path(step))
            saved, now = opt_state_layout(meta["config"]["train"]), opt_state_layout(cfg.train)
            for what in (w for w in saved if saved[w] != now[w]):
                raise UserError(
                    f"{checkpointer.path(step)}: its optimizer state was saved with {what}={saved[what]!r}, "
                    f"the config says {now[what]!r}; resume with the same choice, or use a new --workdir"
                )
    finally:
        checkpointer.close()
    return step


def check_workdir_config(cfg: ml_collections.ConfigDict, workdir: Path, advice: str = _NEW_RUN) -> None:
    """Refuses a workdir whose config.json (from an earlier run) disagrees on the model or data (the
    checkpoint's own config, checked next, notes what else changed: once)."""
    path = workdir / RUN_CONFIG
    if path.is_file():
        saved = saved_config(workdir)
        keep_saved_forms(cfg, flatten(saved))
        check_compatible({"config": saved}, cfg, path, notes=False, advice=advice)


def truncate_metrics(path: Path, step: int | None) -> None:
    """Drops metrics.ndjson lines after ``step`` (all of them on a fresh start): the resumed run
    writes them again, so a killed run leaves no second set of lines for a step."""
    if jax.process_index() != 0 or not path.is_file():
        return
    keep = []
    if step is not None:
        for line in path.read_text().splitlines(keepends=True):
            try:
                record_step = json.loads(line).get("step")
            except ValueError:
                break  # a line cut short by a killed writer ends the file
            if record_step is None or record_step <= step:
                keep.append(line)
    write_text_atomic(path, "".join(keep))
