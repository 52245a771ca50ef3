"""The one path abstraction of codex_jax: local folders and ``gs://`` buckets alike, plus checksums,
atomic writes and JSON read/write.

Every user path (``--workdir``, ``data.source``, ``data.tokenizer``, ``model.init_from``, ``export.dir``...)
goes through :func:`as_path`: a URI (``gs://bucket/run``; any scheme etils knows) becomes an
``etils.epath.Path`` served by fsspec (gcsfs for ``gs://``), a local path stays a ``pathlib.Path`` (the
os calls epath's own local backend makes, so local runs behave exactly as before). Orbax takes both.
Code outside this module uses only what both offer (``/``, ``name``, ``parent``, ``exists``,
``is_file``, ``is_dir``, ``iterdir``, ``read_*``, ``write_*``, ``open``, ``mkdir``, ``unlink``) and the
helpers here for the rest (size, recursive listing, glob, copy, delete, a local copy for memory maps).
No module opens a user path with the builtin ``open`` (``tests/unit/test_gcs_paths.py`` checks it).

Atomic writes. Locally: a temporary file and ``os.replace``. On a bucket there is no rename (GCS copies
and deletes), but an object upload is all-or-nothing: a reader sees the old object or the whole new
one, never half. So :func:`write_bytes_atomic` uploads in place there. What needs "all files or none"
(a checkpoint step, a token cache) orders its writes instead: the files first, then the one object
that says they are complete (``manifest.sha256.json`` with Orbax's ``commit_success.txt``, the cache's
``key.json``), which readers require.

``EPATH_USE_TF`` is set to ``false`` (unless set already): with TensorFlow installed, epath would
otherwise use ``tf.io.gfile``, which ignores the gcsfs settings (``STORAGE_EMULATOR_HOST``,
credentials) that everything else here uses.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any, TypeAlias

import fsspec
from etils import epath

from codex_jax.errors import UserError

os.environ.setdefault("EPATH_USE_TF", "false")  # gcsfs behind gs:// (see the module docstring)
# No cached bucket listings: other processes (the hosts of a run, an eval beside training, a resumed run)
# write the same bucket, and a listing cached by gcsfs would hide their objects from this one.
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)

# A path of either kind: pathlib.Path (local) or etils.epath.Path (a bucket), typed as pathlib.Path:
# epath.Path offers the same methods (etils ships no type information for mypy to check them).
AnyPath: TypeAlias = pathlib.Path
_URI_SCHEMES = ("gs://", "s3://", "az://", "hf://")


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URI of an object store (``gs://...``) rather than a local path."""
    return os.fspath(path).startswith(_URI_SCHEMES)


def as_path(path: str | os.PathLike) -> AnyPath:
    """``path`` as a path object: an ``epath.Path`` for a URI (``gs://b/run``), else a ``pathlib.Path``."""
    if isinstance(path, epath.Path) and not isinstance(path, pathlib.Path):
        return path if is_remote(path) else pathlib.Path(os.fspath(path))
    return epath.Path(os.fspath(path)) if is_remote(path) else pathlib.Path(path)


def absolute(path: str | os.PathLike) -> AnyPath:
    """``as_path(path)``, made absolute when local (a URI is absolute already; ``Path.absolute`` of
    an epath URI would prefix the working directory)."""
    p = as_path(path)
    return p if is_remote(p) else p.absolute()


def size(path: AnyPath) -> int:
    """The size of the file ``path`` in bytes."""
    return int(epath.Path(path).stat().length) if is_remote(path) else path.stat().st_size


def mtime(path: AnyPath) -> float:
    """The modification time of ``path`` (seconds since the epoch)."""
    return float(epath.Path(path).stat().mtime) if is_remote(path) else path.stat().st_mtime


def walk_files(root: AnyPath) -> list[AnyPath]:
    """Every file under the folder ``root`` (recursively), sorted."""
    root = as_path(root)
    if not is_remote(root):
        return sorted(p for p in root.rglob("*") if p.is_file())
    # epath's rglob refuses '**' on buckets; its walk yields bucket-relative folders without the scheme.
    scheme = os.fspath(root).split("://", 1)[0] + "://"
    found = []
    for folder, _, names in epath.Path(root).walk():
        base = os.fspath(folder)
        base = base if base.startswith(scheme) else scheme + base
        found += [epath.Path(f"{base}/{name}") for name in names]
    return sorted(found, key=os.fspath)


def glob_files(pattern: str) -> list[AnyPath]:
    """The files matching ``pattern`` (``**`` matches any depth), sorted: a local glob, or one on a
    bucket (``gs://b/src/**/*.py``; gcsfs lists the objects under the fixed prefix once)."""
    if not is_remote(pattern):
        return sorted(pathlib.Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    fs, scheme = _filesystem(pattern)
    names = fs.glob(pattern[len(scheme) :] if pattern.startswith(scheme) else pattern, detail=True)
    return sorted(
        (epath.Path(scheme + name) for name, info in names.items() if info.get("type") == "file"),
        key=os.fspath,
    )


def rmtree(path: AnyPath) -> None:
    """Deletes the folder ``path`` and everything under it (nothing when it does not exist)."""
    path = as_path(path)
    if is_remote(path):
        if path.exists():
            epath.Path(path).rmtree()
    elif path.exists():
        shutil.rmtree(path)


def copy_file(src: AnyPath, dst: AnyPath) -> None:
    """Copies the file ``src`` to ``dst`` (either may be on a bucket), creating ``dst``'s folder."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not is_remote(src) and not is_remote(dst):
        shutil.copyfile(src, dst)
    else:
        dst.write_bytes(src.read_bytes())


def copytree(src: AnyPath, dst: AnyPath) -> None:
    """Copies every file under the folder ``src`` to the same relative place under ``dst``
    (``shutil.copytree`` when both are local)."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copytree(src, dst)
        return
    for f in walk_files(src):
        copy_file(f, dst / pathlib.PurePosixPath(os.fspath(f)[len(os.fspath(src)) :].lstrip("/")))


def local_copy(path: AnyPath) -> pathlib.Path:
    """A local file with ``path``'s bytes, for readers that need one (``np.memmap``, safetensors'
    ``safe_open``, transformers' ``from_pretrained``): ``path`` itself when local, else a copy in
    ``$CODEX_JAX_CACHE`` (default ``~/.cache/codex_jax/remote``), downloaded again when the object's size
    or time differ. Files of one bucket folder get copies in one local folder (a tokenizer's files
    stay together)."""
    if not is_remote(path):
        return pathlib.Path(path)
    uri = os.fspath(path)
    root = pathlib.Path(os.environ.get("CODEX_JAX_CACHE", "~/.cache/codex_jax/remote")).expanduser()
    local = root / hashlib.sha256(os.fspath(path.parent).encode()).hexdigest()[:16] / path.name
    stamp = local.with_name(local.name + ".source")
    want = json.dumps({"uri": uri, "bytes": size(path), "mtime": mtime(path)})
    if not (local.is_file() and stamp.is_file() and stamp.read_text() == want):
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=".download.")
        with path.open("rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, local)
        stamp.write_text(want)
    return local


def sha256_file(path: AnyPath) -> str:
    """The sha256 hex digest of one file's bytes, read in 1 MiB chunks."""
    return sha256_files([path])


def sha256_files(paths: Iterable[AnyPath]) -> str:
    """One sha256 hex digest over the contents of ``paths``, in order."""
    h = hashlib.sha256()
    for path in paths:
        with as_path(path).open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def write_bytes_atomic(path: AnyPath, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers never see half of it: locally via a temporary file
    and a rename; on a bucket with one upload (an object appears whole or not at all)."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        path.write_bytes(data)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text_atomic(path: AnyPath, text: str) -> None:
    """``write_bytes_atomic`` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: AnyPath, obj: Any, *, main_process: bool = True) -> None:
    """Writes ``obj`` as indented JSON, atomically; nothing when ``main_process`` is False (pass
    ``jax.process_index() == 0`` so that one process of a multi-host run writes a shared file)."""
    if main_process:
        write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: AnyPath, what: str = "JSON") -> Any:
    """The JSON in ``path``; a UserError naming the file when it is missing or unreadable."""
    try:
        return json.loads(as_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the {what} ({e})") from None


def _filesystem(uri: str):
    """The fsspec filesystem of ``uri`` and its ``scheme://`` prefix."""
    scheme = uri.split("://", 1)[0]
    return fsspec.filesystem(scheme), scheme + "://"
