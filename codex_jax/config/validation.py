"""Validation of a composed config: types, ranges, choices and cross-key rules, before any work.

:func:`validate` raises :class:`UserError` naming the first bad key (``config key 'train.steps': ...``).
"""

from __future__ import annotations

import re
from typing import Any

import ml_collections

from codex_jax.config.schema import SCHEMA, flatten
from codex_jax.errors import UserError
from codex_jax.models.config import ATTENTION_IMPLS, FAMILIES, REMAT_POLICIES


def _check(ok: bool, key: str, reason: str, value: Any) -> None:
    if not ok:
        raise UserError(f"config key '{key}': {reason} (got {value!r})")


_CHOICES = {
    "model.family": FAMILIES,
    "model.attention_impl": ATTENTION_IMPLS,
    "model.remat": REMAT_POLICIES,
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "parallel.mode": ("jit", "pmap"),
    "train.on_nan": ("raise", "skip"),
    "train.accum_impl": ("multisteps", "scan"),
    "checkpoint.best_metric": ("loss", "perplexity", "token_accuracy"),
    "checkpoint.best_mode": ("min", "max"),
    "checkpoint.on_corrupt": ("error", "previous"),
    "export.format": ("params", "hf", "peft"),
    "lora.base_dtype": ("", "float32", "bfloat16"),
    "data.on_bad_record": ("skip", "error"),
}
WRITER_CHOICES = ("tensorboard", "ndjson", "console", "mlflow", "clu")
_POSITIVE = (
    "data.seq_len",
    "data.batch_size",
    "train.steps",
    "train.grad_accum_steps",
    "train.log_every",
    "train.eval_every",
    "eval.num_batches",
    "checkpoint.every_steps",
    "checkpoint.max_to_keep",
    "model.num_layers",
    "model.num_heads",
    "model.num_kv_heads",
    "model.d_model",
    "model.d_ff",
    "model.vocab_size",
    "eval.line_completion_samples",
    "eval.line_completion_max_tokens",
)
_NON_NEGATIVE = (
    "train.warmup_steps",
    "train.stop_after",
    "train.weight_decay",
    "train.grad_clip",
    "data.max_files",
    "data.num_workers",
    "data.prefetch",
    "generate.max_new_tokens",
    "generate.top_k",
    "generate.temperature",
    "seed",
    "checkpoint.keep_every",
    "checkpoint.best_k",
    "lora.rank",
)


def validate(cfg: ml_collections.ConfigDict, num_devices: int = 1, num_processes: int = 1) -> None:
    """Raises UserError naming the first invalid key of ``cfg``; returns None when all is well."""
    flat = flatten(cfg)
    for key in flat:
        if key not in SCHEMA:
            raise UserError(f"config key '{key}': unknown key (see the config reference in README.md)")
    for key, (default, _) in SCHEMA.items():
        _check(key in flat, key, "missing", None)
        value = flat[key]
        expected = type(default)
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
        _check(
            ok and not (expected is not bool and isinstance(value, bool)),
            key,
            f"must be of type {expected.__name__}",
            value,
        )
    for key, choices in _CHOICES.items():
        _check(flat[key] in choices, key, f"must be one of {', '.join(choices)}", flat[key])
    for key in _POSITIVE:
        _check(flat[key] > 0, key, "must be > 0", flat[key])
    for key in _NON_NEGATIVE:
        _check(flat[key] >= 0, key, "must be >= 0", flat[key])
    _check(
        0 < flat["data.eval_fraction"] < 1,
        "data.eval_fraction",
        "must be in (0, 1)",
        flat["data.eval_fraction"],
    )
    _check(0 <= flat["model.dropout"] < 1, "model.dropout", "must be in [0, 1)", flat["model.dropout"])
    _check(
        0 < flat["train.learning_rate"] < 1,
        "train.learning_rate",
        "must be in (0, 1)",
        flat["train.learning_rate"],
    )
    _check(
        0 <= flat["train.min_lr_ratio"] <= 1,
        "train.min_lr_ratio",
        "must be in [0, 1]",
        flat["train.min_lr_ratio"],
    )
    _check(
        0 < flat["generate.top_p"] <= 1,
        "generate.top_p",
        "must be in (0, 1]",
        flat["generate.top_p"],
    )
    _check(
        flat["model.num_heads"] % flat["model.num_kv_heads"] == 0,
        "model.num_kv_heads",
        f"must divide model.num_heads={flat['model.num_heads']}",
        flat["model.num_kv_heads"],
    )
    _check(
        flat["model.d_model"] % flat["model.num_heads"] == 0,
        "model.num_heads",
        f"must divide model.d_model={flat['model.d_model']}",
        flat["model.num_heads"],
    )
    _check(
        flat["train.warmup_steps"] <= flat["train.steps"],
        "train.warmup_steps",
        f"must be <= train.steps={flat['train.steps']}",
        flat["train.warmup_steps"],
    )
    step = flat["eval.step"]
    _check(
        step in ("latest", "best") or step.isdigit(),
        "eval.step",
        "must be 'latest', 'best' or a step number",
        step,
    )
    init_from = flat["model.init_from"]
    kind, _, where = init_from.partition(":")
    _check(
        init_from == "" or (kind in ("hf", "workdir") and where != ""),
        "model.init_from",
        "must be '', 'hf:/path/to/folder' or 'workdir:/path/to/run'",
        init_from,
    )
    _validate_lora(flat)
    _check(
        flat["data.batch_size"] % num_devices == 0,
        "data.batch_size",
        f"must be divisible by the {num_devices} devices in use",
        flat["data.batch_size"],
    )
    _check(
        flat["data.batch_size"] % num_processes == 0,
        "data.batch_size",
        f"must be divisible by the {num_processes} processes",
        flat["data.batch_size"],
    )
    writers = [w.strip() for w in flat["logging.writers"].split(",") if w.strip()]
    for w in writers:
        _check(
            w in WRITER_CHOICES,
            "logging.writers",
            f"each writer must be one of {', '.join(WRITER_CHOICES)}",
            w,
        )
    if "mlflow" in writers:
        from codex_jax.metrics.mlflow_writer import is_remote

        uri = flat["logging.mlflow_uri"]
        _check(
            not is_remote(uri) or flat["logging.mlflow_allow_remote"],
            "logging.mlflow_uri",
            "a remote tracking server needs logging.mlflow_allow_remote=True",
            uri,
        )


def _validate_lora(flat: dict[str, Any]) -> None:

    _check(flat["lora.alpha"] > 0, "lora.alpha", "must be > 0", flat["lora.alpha"])
    _check(0 <= flat["lora.dropout"] < 1, "lora.dropout", "must be in [0, 1)", flat["lora.dropout"])
    try:
        re.compile(flat["lora.targets"])
    except re.error as e:
        _check(False, "lora.targets", f"not a regex ({e})", flat["lora.targets"])
    lora_from = flat["lora.init_from"]
    _check(
        lora_from == "" or (lora_from.startswith("peft:") and len(lora_from) > 5),
        "lora.init_from",
        "must be '' or 'peft:/path/to/adapter'",
        lora_from,
    )
    _check(
        flat["lora.rank"] > 0 or not lora_from,
        "lora.init_from",
        "needs lora.rank > 0 (a LoRA run)",
        lora_from,
    )
