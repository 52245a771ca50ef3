"""The ``codeeval.*`` config section, checked once (a UserError naming the bad key)."""

from __future__ import annotations

import dataclasses
import json

import ml_collections

from codex_jax.errors import UserError
from codex_jax.sandbox import Limits

LONG_PROMPTS = ("truncate", "skip")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one functional-correctness evaluation does (the ``codeeval.*`` keys: docs/reference/config.md)."""

    problems: str
    max_problems: int
    num_samples: int
    ks: tuple[int, ...]
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...]
    batch_size: int
    bucket: int
    limits: Limits
    workers: int
    python: str
    prompt_format: str = "raw"  # 'raw' or 'chat' (codeeval.prompt_format, 'auto' resolved)
    long_prompts: str = "truncate"

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def sampling(self) -> dict:
        """The generation settings, as recorded with the results."""
        keys: tuple[str, ...] = (
            "num_samples",
            "temperature",
            "top_p",
            "max_new_tokens",
            "stop",
            "batch_size",
            "bucket",
            "prompt_format",
            "long_prompts",
        )
        return {k: getattr(self, k) for k in keys} | {"k": list(self.ks)}


def _fail(key: str, why: str, value) -> UserError:
    return UserError(f"config key 'codeeval.{key}': {why}, got {value!r}")


def _stop(text: str) -> tuple[str, ...]:
    try:
        stop = json.loads(text)
    except ValueError:
        stop = None
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _fail("stop", "must be a JSON list of non-empty strings", text)
    return tuple(stop)


def _ks(text: str, n: int) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        ks = ()
    if not ks or ks[0] < 1 or ks[-1] > n:
        raise _fail("k", f"must be comma-separated integers in [1, codeeval.num_samples={n}]", text)
    return ks


def settings_from_config(cfg: ml_collections.ConfigDict) -> Settings:
    """The checked ``codeeval`` section of ``cfg``."""
    c = cfg.codeeval
    for key in (
        "num_samples",
        "max_new_tokens",
        "batch_size",
        "bucket",
        "memory_mb",
        "file_size_mb",
        "workers",
    ):
        if c[key] < 1:
            raise _fail(key, "must be >= 1", c[key])
    for key in ("max_problems", "temperature"):
        if c[key] < 0:
            raise _fail(key, "must be >= 0", c[key])
    if not 0.0 < c.top_p <= 1.0:
        raise _fail("top_p", "must be in (0, 1]", c.top_p)
    if c.timeout <= 0:
        raise _fail("timeout", "must be > 0", c.timeout)
    if c.max_procs < 1 or c.workers < 1:
        raise _fail(
            "max_procs" if c.max_procs < 1 else "workers", "must be >= 1", min(c.max_procs, c.workers)
        )
    prompt_format = c.get("prompt_format", "raw")
    if prompt_format not in ("auto", "raw", "chat"):
        raise _fail("prompt_format", "must be one of auto, raw, chat", prompt_format)
    if prompt_format == "auto":
        prompt_format = "chat" if cfg.data.format == "chat" else "raw"
    if c.long_prompts not in LONG_PROMPTS:
        raise _fail("long_prompts", f"must be one of {', '.join(LONG_PROMPTS)}", c.long_prompts)
    limits = Limits(
        float(c.timeout),
        int(c.memory_mb),
        int(c.file_size_mb),
        int(c.max_procs),
        site_packages=bool(c.get("site_packages", True)),
    )
    return Settings(
        problems=c.problems,
        max_problems=int(c.max_problems),
        num_samples=int(c.num_samples),
        ks=_ks(c.k, int(c.num_samples)),
        temperature=float(c.temperature),
        top_p=float(c.top_p),
        max_new_tokens=int(c.max_new_tokens),
        stop=_stop(c.stop),
        batch_size=int(c.batch_size),
        bucket=int(c.bucket),
        limits=limits,
        workers=int(c.workers),
        python=c.python,
        prompt_format=prompt_format,
        long_prompts=c.long_prompts,
    )
