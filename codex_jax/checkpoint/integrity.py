"""A checkpoint step's integrity: the sha256 manifest of its files, and whether a step is complete."""

from __future__ import annotations

import json
from pathlib import Path

from codex_jax import files
from codex_jax.errors import UserError
from codex_jax.files import sha256_file

MANIFEST = "manifest.sha256.json"
# Top-level orbax bookkeeping rewritten after the manifest (at the commit), so not hashed.
COMMIT_FILE = "commit_success.txt"  # Orbax's mark of a committed step (the only one on a bucket)
_UNHASHED = frozenset({MANIFEST, "_CHECKPOINT_METADATA", COMMIT_FILE})


class CorruptCheckpoint(UserError):
    """A checkpoint step whose files are missing, truncated or altered."""


def write_manifest(root: Path) -> None:
    """Writes ``root/MANIFEST``: size and sha256 of every file under ``root`` (but orbax's own)."""
    records = {}
    for p in files.walk_files(root):
        name = p.relative_to(root).as_posix()
        if name not in _UNHASHED:
            records[name] = {"bytes": files.size(p), "sha256": sha256_file(p)}
    (root / MANIFEST).write_text(json.dumps({"files": records}, indent=1) + "\n")


def complete(step_dir: Path) -> bool:
    """Whether a step folder is complete: it has its manifest (and, on a bucket, Orbax's commit file,
    written after the manifest: there is no atomic rename to finish a step)."""
    if not (step_dir / MANIFEST).is_file():
        return False
    return not files.is_remote(step_dir) or (step_dir / COMMIT_FILE).is_file()


def check_file(path: Path, name: str, record: dict) -> None:
    """Raises CorruptCheckpoint unless ``path/name`` has the size and sha256 of its manifest ``record``."""
    f = path / name
    if not f.is_file():
        raise CorruptCheckpoint(f"checkpoint {path}: {name} is missing")
    size = files.size(f)
    if size != record["bytes"]:
        raise CorruptCheckpoint(
            f"checkpoint {path}: {name} has {size} bytes, {record['bytes']} when saved (truncated or altered)"
        )
    if sha256_file(f) != record["sha256"]:
        raise CorruptCheckpoint(f"checkpoint {path}: {name} does not match its sha256 (altered)")


def first_line(e: BaseException) -> str:
    """An exception's type and the start of its message, on one line."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__
