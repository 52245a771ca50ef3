"""Validation of a composed config: types, ranges, choices and cross-key rules, before any work.

:func:`validate` raises :class:`UserError` naming the first bad key (``config key 'train.steps': ...``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import ml_collections

from codex_jax.config.mixture import SOURCE_KEYS, parse_mixture
from codex_jax.config.schema import SCHEMA, flatten
from codex_jax.config.schema_objective import check_objective
from codex_jax.corpus.examples import FORMATS, OVERLONG, PACKINGS, TRAIN_ON
from codex_jax.errors import UserError
from codex_jax.metrics.mlflow_writer import is_remote
from codex_jax.metrics.writers import WRITER_NAMES
from codex_jax.models import registry as model_presets
from codex_jax.models.config import ATTENTION_IMPLS, FAMILIES, GRAD_BARRIERS, MOE_IMPLS, REMAT_POLICIES


def _check(ok: bool, key: str, reason: str, value: Any) -> None:
    if not ok:
        raise UserError(f"config key '{key}': {reason} (got {value!r})")


_CHOICES = {
    "model.family": FAMILIES,
    "model.attention_impl": ATTENTION_IMPLS,
    "model.remat": REMAT_POLICIES,
    "model.grad_barriers": GRAD_BARRIERS,
    "model.moe_impl": MOE_IMPLS,
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "parallel.mode": ("jit", "pmap"),
    "train.on_nan": ("raise", "skip"),
    "train.accum_impl": ("multisteps", "scan"),
    "train.optimizer": ("adamw", "adafactor", "lion", "muon"),  # compute/optim.py OPTIMIZERS
    "train.schedule": ("cosine", "linear", "constant", "wsd"),  # compute/optim.py SCHEDULES
    "checkpoint.best_metric": ("loss", "perplexity", "token_accuracy"),
    "checkpoint.best_mode": ("min", "max"),
    "checkpoint.on_corrupt": ("error", "previous"),
    "export.format": ("params", "hf", "peft"),
    "lora.base_dtype": ("", "float32", "bfloat16", "int8", "nf4"),
    "eval.quantize": ("", "int8"),
    "data.on_bad_record": ("skip", "error"),
    "data.format": FORMATS,
    "data.packing": PACKINGS,
    "data.overlong": OVERLONG,
    "data.train_on": TRAIN_ON,
}
_POSITIVE = (
    "data.seq_len",
    "data.cache_workers",
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
    "generate.seed",
    "seed",
    "checkpoint.keep_every",
    "checkpoint.best_k",
    "lora.rank",
    "model.loss_chunk",
    "model.num_experts",
    "model.moe_d_ff",
    "model.router_aux_loss_coef",
    "model.router_z_loss_coef",
)


def _regex(value: str) -> str | None:
    """Why ``value`` is not a regex, or None."""
    try:
        re.compile(value)
    except re.error as e:
        return f"not a regex ({e})"
    return None


def _init_from(value: str) -> bool:
    """Whether ``value`` is a ``model.init_from``: '', 'hf:FOLDER' or 'workdir:RUN'."""
    kind, _, where = value.partition(":")
    return value == "" or (kind in ("hf", "workdir") and where != "")


# One rule per key: ``key: (ok(value), reason)``, or ``key: reason_or_none(value)`` when the reason
# depends on the value. Checked in this order, after the types, choices and signs.
_RULES: dict[str, tuple[Callable[[Any], bool], str] | Callable[[Any], str | None]] = {
    "data.eval_fraction": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "model.dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "train.learning_rate": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "train.min_lr_ratio": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "train.wsd_decay_fraction": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "train.z_loss": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "train.ema_decay": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "train.adafactor.decay_rate": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "train.adafactor.min_dim_size_to_factor": (lambda v: v > 0, "must be > 0"),
    "train.adafactor.clipping_threshold": (lambda v: v >= 0, "must be >= 0"),
    "train.adafactor.momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "train.adafactor.weight_decay_rate": (lambda v: v >= 0, "must be >= 0"),
    "train.lion.b1": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "train.lion.b2": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "train.muon.learning_rate": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "train.muon.beta": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "train.muon.ns_steps": (lambda v: v > 0, "must be > 0"),
    "generate.top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "eval.step": (
        lambda v: v in ("latest", "best") or v.isdigit(),
        "must be 'latest', 'best' or a step number",
    ),
    "model.init_from": (_init_from, "must be '', 'hf:/path/to/folder' or 'workdir:/path/to/run'"),
    "model.preset": lambda v: (
        None
        if v == "" or v in model_presets.names()
        else f"must be '' or one of {', '.join(model_presets.names())}"
    ),
    "lora.alpha": (lambda v: v > 0, "must be > 0"),
    "lora.dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "lora.targets": _regex,
    "lora.init_from": (
        lambda v: v == "" or (v.startswith("peft:") and len(v) > 5),
        "must be '' or 'peft:/path/to/adapter'",
    ),
}


def validate(cfg: ml_collections.ConfigDict, num_devices: int = 1, num_processes: int = 1) -> None:
    """Raises UserError naming the first invalid key of ``cfg``; returns None when all is well."""
    flat = flatten(cfg)
    _check_keys_and_types(flat)
    for key, choices in _CHOICES.items():
        _check(flat[key] in choices, key, f"must be one of {', '.join(choices)}", flat[key])
    for key in _POSITIVE:
        _check(flat[key] > 0, key, "must be > 0", flat[key])
    for key in _NON_NEGATIVE:
        _check(flat[key] >= 0, key, "must be >= 0", flat[key])
    for key, rule in _RULES.items():
        if callable(rule):
            reason = rule(flat[key])
            _check(reason is None, key, reason or "", flat[key])
        else:
            _check(rule[0](flat[key]), key, rule[1], flat[key])
    _check_cross_keys(flat, num_devices, num_processes)
    _check_mesh(flat)
    _check_writers(flat)
    check_objective(flat, num_devices, num_processes)
    parse_mixture(flat["data.mixture"], {k: flat[f"data.{k}"] for k in SOURCE_KEYS})  # names a bad key


def _check_keys_and_types(flat: dict[str, Any]) -> None:
    """Every key known, none missing, each of its default's type (an int passes for a float)."""
    for key in flat:
        if key not in SCHEMA:
            raise UserError(
                f"config key '{key}': unknown key (see the config reference: docs/reference/config.md)"
            )
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


def _check_cross_keys(flat: dict[str, Any], num_devices: int, num_processes: int) -> None:
    """The rules between keys (and the devices and processes in use)."""
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
        f"must be <= train.steps={flat['train.steps']} (set --config.train.warmup_steps too)",
        flat["train.warmup_steps"],
    )
    _check(
        flat["train.ema_decay"] > 0 or not flat["eval.use_ema"],
        "eval.use_ema",
        "needs train.ema_decay > 0 (an EMA of the parameters to evaluate)",
        flat["eval.use_ema"],
    )
    lora_from = flat["lora.init_from"]
    _check(
        flat["lora.rank"] > 0 or not lora_from,
        "lora.init_from",
        "needs lora.rank > 0 (a LoRA run)",
        lora_from,
    )
    _check(
        not flat["lora.experts"] or flat["lora.dropout"] == 0,
        "lora.dropout",
        "must be 0 with lora.experts=True (an expert's adapter input is not one row per token; PEFT's "
        "expert adapters refuse dropout too)",
        flat["lora.dropout"],
    )
    _check(
        not flat["lora.quantize_embeddings"] or flat["lora.base_dtype"] in ("int8", "nf4"),
        "lora.quantize_embeddings",
        "needs lora.base_dtype 'int8' or 'nf4' (a quantized base)",
        flat["lora.quantize_embeddings"],
    )
    for count, what in ((num_devices, "devices in use"), (num_processes, "processes")):
        _check(
            flat["data.batch_size"] % count == 0,
            "data.batch_size",
            f"must be divisible by the {count} {what}",
            flat["data.batch_size"],
        )


def _check_mesh(flat: dict[str, Any]) -> None:
    """The device mesh's axes against each other and the model's experts (a preset's, when
    ``model.preset`` names one; a model from ``model.init_from`` is checked by the runner)."""
    experts, keyed = flat["model.num_experts"], not flat["model.preset"]
    if not keyed and flat["model.preset"] in model_presets.names():
        experts = model_presets.get(flat["model.preset"]).get("num_experts", 0)
    _check(
        not keyed or not experts or 1 <= flat["model.experts_per_token"] <= experts,
        "model.experts_per_token",
        f"must be between 1 and model.num_experts={experts}",
        flat["model.experts_per_token"],
    )
    _check(
        not (flat["parallel.mesh.data"] == -1 and flat["parallel.mesh.fsdp"] == -1),
        "parallel.mesh.fsdp",
        "-1 (the devices left) needs a fixed parallel.mesh.data (one axis at most may be -1)",
        flat["parallel.mesh.fsdp"],
    )
    expert_axis = flat["parallel.mesh.expert"]
    _check(
        expert_axis >= 1
        and (expert_axis == 1 or flat["model.init_from"] or (experts and experts % expert_axis == 0)),
        "parallel.mesh.expert",
        f"must divide model.num_experts={experts}",
        expert_axis,
    )


def _check_writers(flat: dict[str, Any]) -> None:
    """Each of ``logging.writers`` a known writer; a remote MLflow server only when allowed."""
    writers = [w.strip() for w in flat["logging.writers"].split(",") if w.strip()]
    for w in writers:
        _check(
            w in WRITER_NAMES,
            "logging.writers",
            f"each writer must be one of {', '.join(WRITER_NAMES)}",
            w,
        )
    uri = flat["logging.mlflow_uri"]
    _check(
        "mlflow" not in writers or not is_remote(uri) or flat["logging.mlflow_allow_remote"],
        "logging.mlflow_uri",
        "a remote tracking server needs logging.mlflow_allow_remote=True",
        uri,
    )
