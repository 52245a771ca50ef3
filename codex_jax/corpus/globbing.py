"""Local files listed lazily in sorted order, one folder at a time (a million-file corpus is never one
list): a glob (:func:`iter_glob`) or the standard library's ``*.py`` files (:func:`iter_stdlib`).

:func:`iter_glob` yields what ``sorted(glob.glob(pattern, recursive=True))`` keeps as files, in the
same order (``pathlib.Path`` order: by path parts), walking one directory at a time: ``**`` spans
any number of directories, ``*``, ``?`` and ``[...]`` stay within one name, and names starting
with ``'.'`` match only a pattern part that starts with ``'.'`` (as ``glob`` does). Walking each
folder's entries in name order, a folder's files before those of a later sibling, is that order.
"""

from __future__ import annotations

import glob
import os
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# pydoc_data holds one 750 KB generated string of documentation prose, not code.
EXCLUDED_STDLIB_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "pydoc_data"})


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def _part_regex(part: str) -> str:
    """A regex for one ``/``-free glob part (``**`` handled by the caller)."""
    out, i = [], 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in part[i + 2 :]:
            end = part.index("]", i + 2)
            body = part[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    hidden = "" if part.startswith(".") else r"(?!\.)"
    return hidden + "".join(out)


def glob_split(pattern: str) -> tuple[Path, re.Pattern, int | None]:
    """``(root, regex of paths relative to root, depth)``: root is the longest leading directory without
    glob characters; depth is the number of parts a match has (None with ``**``)."""
    parts = pattern.split("/")
    fixed = 0
    while fixed < len(parts) - 1 and not glob.has_magic(parts[fixed]):
        fixed += 1
    root = Path("/".join(parts[:fixed]) or ("/" if pattern.startswith("/") else "."))
    rest = parts[fixed:]
    regex = []
    for index, part in enumerate(rest):
        last = index == len(rest) - 1
        if part == "**":
            regex.append(r"(?:(?!\.)[^/]+/)*(?!\.)[^/]+" if last else r"(?:(?!\.)[^/]+/)*")
        else:
            regex.append(_part_regex(part) + ("" if last else "/"))
    depth = None if "**" in rest else len(rest)
    return root, re.compile("".join(regex) + r"\Z"), depth


def iter_glob(pattern: str) -> Iterator[Path]:
    """The files matching the local ``pattern`` (``glob.glob(pattern, recursive=True)``'s files), in
    sorted order, lazily."""
    pattern = os.path.expanduser(pattern)
    if not glob.has_magic(pattern):
        if os.path.isfile(pattern):
            yield Path(pattern)
        return
    root, regex, depth = glob_split(pattern)
    hidden_ok = any(part.startswith(".") for part in pattern.split("/"))
    yield from _walk(root, "", regex, depth, hidden_ok)


def _walk(folder: Path, prefix: str, regex: re.Pattern, depth: int | None, hidden_ok: bool) -> Iterator[Path]:
    """Files under ``folder`` (``prefix``: its path relative to the root) matching ``regex``, by name."""
    try:
        with os.scandir(folder) as scan:
            entries = sorted((entry.name, entry.is_dir(), entry.is_file()) for entry in scan)
    except OSError:  # unreadable or vanished: glob skips it too
        return
    level = prefix.count("/") + 1
    for name, is_dir, is_file in entries:
        relative = prefix + name
        if is_file and regex.match(relative):
            yield folder / name
        if is_dir and (depth is None or level < depth) and (hidden_ok or not name.startswith(".")):
            yield from _walk(folder / name, relative + "/", regex, depth, hidden_ok)


def iter_stdlib(root: Path) -> Iterator[Path]:
    """The ``*.py`` files under ``root`` (what ``os.walk`` finds, less :data:`EXCLUDED_STDLIB_DIRS`, not
    following linked folders), in sorted order, lazily."""
    try:
        with os.scandir(root) as scan:
            entries = sorted((e.name, e.is_dir(), e.is_symlink()) for e in scan)
    except OSError:  # unreadable: os.walk skips it too
        return
    for name, is_dir, is_link in entries:
        if not is_dir:
            if name.endswith(".py"):
                yield root / name
        elif not is_link and name not in EXCLUDED_STDLIB_DIRS:
            yield from iter_stdlib(root / name)
