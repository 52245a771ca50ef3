"""Small file helpers every layer uses: checksums, atomic writes, and JSON read/write.

One place for each, so that "a reader never sees half a file" and "a checksum covers these bytes"
mean the same thing everywhere (checkpoint manifests, token caches, tokenizers, run configs).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from codex_jax.errors import UserError


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of one file's bytes, read in 1 MiB chunks."""
    return sha256_files([path])


def sha256_files(paths: Iterable[Path]) -> str:
    """One sha256 hex digest over the contents of ``paths``, in order."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file and a rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """``write_bytes_atomic`` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any, *, main_process: bool = True) -> None:
    """Writes ``obj`` as indented JSON, atomically; nothing when ``main_process`` is False (pass
    ``jax.process_index() == 0`` so that one process of a multi-host run writes a shared file)."""
    if main_process:
        write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path, what: str = "JSON") -> Any:
    """The JSON in ``path``; a UserError naming the file when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the {what} ({e})") from None
