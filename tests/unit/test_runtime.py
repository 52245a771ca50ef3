"""codex_jax/runtime.py in fresh processes: glibc malloc settings on import (unless the user set theirs) and
the persistent compilation cache under the user's cache dir (on by default, off with '')."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "JAX_COMPILATION", "XDG_"))}
    base.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **env)
    proc = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_malloc_tuned_on_import_unless_the_user_set_malloc():
    code = "import codex_jax.runtime as r; print(r.tune_malloc())"
    assert _python(code) == "True"
    assert _python(code, MALLOC_TOP_PAD_="1048576") == "False"
    assert _python(code, CODEX_JAX_MALLOC="0") == "False"


def test_compilation_cache_in_user_cache_dir_and_off(tmp_path):
    code = (
        "import sys, jax; from codex_jax import runtime; "
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
        "print(runtime.use_compilation_cache(sys.argv[1] if len(sys.argv) > 1 else 'auto')); "
        "jax.jit(lambda x: x * 2 + 1)(jax.numpy.arange(3.0)).block_until_ready()"
    )
    folder = tmp_path / "codex_jax" / "xla"
    assert _python(code, XDG_CACHE_HOME=str(tmp_path)) == str(folder)
    assert any(folder.iterdir())  # the executable was written
    own = tmp_path / "own"
    assert _python(code, XDG_CACHE_HOME=str(tmp_path), JAX_COMPILATION_CACHE_DIR=str(own)) == str(own)
    off = _python(code.replace("else 'auto'", "else ''"), XDG_CACHE_HOME=str(tmp_path / "off"))
    assert off == "None" and not (tmp_path / "off").exists()
