"""The packaged configs, reachable from any directory once codex_jax is installed.

The repository's top-level ``configs/`` folder is installed as the package ``codex_jax.configs``
(pyproject's ``package-dir``), so ``--config=configs/base.py`` (the path in a checkout), ``--config=base.py``
and ``--config=base`` all name that packaged ``base.py`` when no such file exists relative to the working
directory; a file that does exist always wins, so a user's own config is never shadowed. ``codex-jax configs``
lists them.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import sys
from pathlib import Path


def _config_dir() -> Path:
    """Where the ``codex_jax.configs`` package (the repository's ``configs/``) was installed."""
    spec = importlib.util.find_spec("codex_jax.configs")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("codex_jax.configs is not installed (pip install -e . maps it to configs/)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


CONFIG_DIR = _config_dir()


def packaged() -> dict[str, Path]:
    """Name (file stem) -> path of every packaged config."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.py")) if p.stem != "__init__"}


def resolve(spec: str) -> str:
    """``spec`` as given when its file exists, else the packaged config it names (``path[:arg]`` kept)."""
    path, sep, arg = spec.partition(":")
    if not path or Path(path).expanduser().is_file():
        return spec
    given = Path(path)
    found = packaged().get(given.name.removesuffix(".py"))
    if found is None or given.is_absolute() or str(given.parent) not in (".", "configs"):
        return spec  # not a packaged name: ml_collections reports the missing file
    return f"{found}{sep}{arg}"


def missing_config(path: str) -> str | None:
    """Why the config file ``path`` cannot be loaded (no such file: the packaged configs and a
    did-you-mean), or None when it exists."""
    if Path(path).expanduser().is_file():
        return None
    names = list(packaged())
    stem = Path(path).name.removesuffix(".py")
    close = difflib.get_close_matches(stem, names, n=1)
    hint = f"; did you mean configs/{close[0]}.py?" if close else ""
    return f"no such config file{hint} (packaged configs: {', '.join(names)})"


def summary(path: Path) -> str:
    """The first line of a config file's docstring."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def main(argv: list[str]) -> int:
    """``codex-jax configs [--paths]``: one line per packaged config (name, what it is, or its path)."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: codex-jax configs [--paths]")
        return 0
    if argv and argv != ["--paths"]:
        usage = "usage: codex-jax configs [--paths]"
        print(f"error: codex-jax configs: unexpected argument {argv[0]!r} ({usage})", file=sys.stderr)
        return 2
    for name, path in packaged().items():
        print(f"{name:12s} {path}" if argv else f"{name:12s} {summary(path)}")
    return 0
