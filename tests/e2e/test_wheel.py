"""Release check: build the wheel from a copy of the source tree, install it into a fresh venv, run it.

Nothing is written into the repository and nothing is downloaded: the wheel is built with
``--no-isolation`` from a copy in a temporary folder, installed with ``--no-deps --no-index``, and the
fresh venv sees this environment's dependencies through a ``deps.pth`` path line (which does not process
the ``.pth`` files there, so the repository's editable install stays invisible to it).
"""

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, xla_flags

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
DIST_NAME = PYPROJECT["project"]["name"]
WHEEL_NAME = f"{DIST_NAME.replace('-', '_')}-{VERSION}-py3-none-any.whl"
IGNORED = (".venv", "venv", "runs", ".git", "build", "dist", "*.egg-info", "__pycache__", ".gpu", ".*_cache")

pytestmark = pytest.mark.slow

REQUIREMENTS_CHECK = """
import importlib.metadata as md, sys
reqs = md.requires(sys.argv[1]) or []
bad = []
try:
    from packaging.requirements import Requirement
except ImportError:  # no packaging: only check that each requirement is installed at all
    import re
    for line in reqs:
        if "extra ==" in line:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", line).group(0)
        try:
            md.version(name)
        except md.PackageNotFoundError:
            bad.append(f"{line} (not installed)")
else:
    for line in reqs:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            bad.append(f"{line} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            bad.append(f"{line} (installed: {have})")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def log(message, start):
    """Prints a timing line (shown with ``pytest -s``)."""
    print(f"[test_wheel {time.monotonic() - start:6.1f}s] {message}")


def run(cmd, *, cwd, env=None, timeout=300):
    """Runs ``cmd``, failing the test with its output when it exits non-zero."""
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def copy_source(dest):
    """Copies the tracked (and untracked, not ignored) files of the repository to ``dest``."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):  # no git or no checkout: copy all but the clutter
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*IGNORED))
        return
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():  # skips files deleted in the working tree but still in the index
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def clean_env(venv):
    """The environment the installed console script runs in: CPU only, no PYTHONPATH, venv on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(1),
        PYTHONNOUSERSITE="1",
        VIRTUAL_ENV=str(venv),
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    return env


def pip_supports_python_option():
    """Whether this interpreter's pip has ``--python`` (pip >= 22.3)."""
    try:
        import pip
    except ImportError:
        return False
    major, minor = (int(p) for p in pip.__version__.split(".")[:2])
    return (major, minor) >= (22, 3)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Builds the wheel from a copy of the repository and installs it into a fresh venv."""
    if not pip_supports_python_option():
        pytest.skip("needs pip >= 22.3 (pip install --python) in the test environment")
    start = time.monotonic()
    root = tmp_path_factory.mktemp("release")
    src, dist, venv, outside = root / "src", root / "dist", root / "venv", root / "outside"
    outside.mkdir()
    copy_source(src)
    log(f"copied the source tree to {src}", start)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, src]
    run(build, cwd=root, env=env)
    wheels = sorted(dist.glob("*.whl"))
    log(f"built {[w.name for w in wheels]}", start)

    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, env=env)
    venv_python = venv / "bin" / "python"
    purelib = run(
        [venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=outside
    ).stdout.strip()
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(purelib) / "deps.pth").write_text("".join(f"{p}\n" for p in deps), encoding="utf-8")
    if len(wheels) == 1:
        run(
            [sys.executable, "-m", "pip", "--python", venv_python, "install", "--no-deps", "--no-index",
             wheels[0]],
            cwd=outside,
            env=clean_env(venv),
        )  # fmt: skip
    log(f"made {venv} and installed the wheel", start)
    return {"src": src, "wheels": wheels, "venv": venv, "outside": outside, "start": start}


def test_wheel_contents(release):
    """One pure-Python wheel holding every package file and the configs, the console script, no tests."""
    assert [w.name for w in release["wheels"]] == [WHEEL_NAME]
    with zipfile.ZipFile(release["wheels"][0]) as zf:
        names = set(zf.namelist())
        dist_info = f"{DIST_NAME.replace('-', '_')}-{VERSION}.dist-info"
        entry_points = configparser.ConfigParser()
        entry_points.read_string(zf.read(f"{dist_info}/entry_points.txt").decode())
        metadata = zf.read(f"{dist_info}/METADATA").decode()

    for name in ("base", "tiny", "lora", "gpt2_small", "llama_1b", "__init__"):
        assert f"codex_jax/configs/{name}.py" in names
    assert "codex_jax/configs/data/sft_chat.jsonl" in names  # configs/sft.py's default data.source
    packaged = {
        p.relative_to(release["src"]).as_posix()
        for p in (release["src"] / "codex_jax").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert not packaged - names, f"package files missing from the wheel: {sorted(packaged - names)}"
    assert not [n for n in names if n.startswith("tests/")]
    assert {n.split("/")[0] for n in names} == {"codex_jax", dist_info}

    scripts = dict(entry_points["console_scripts"]) if "console_scripts" in entry_points else {}
    assert scripts == PYPROJECT["project"]["scripts"]
    assert scripts.get("codex-jax") == "codex_jax.cli:main"
    assert f"Name: {DIST_NAME}\n" in metadata and f"Version: {VERSION}\n" in metadata


def test_installed_package_is_the_wheel(release):
    """The fresh venv imports codex_jax from its own site-packages and has every requirement satisfied."""
    venv, outside = release["venv"], release["outside"]
    env = clean_env(venv)
    python = venv / "bin" / "python"
    script = (
        "import codex_jax, codex_jax.config.packaged as c; print(codex_jax.__file__); print(c.CONFIG_DIR)"
    )
    where = run([python, "-c", script], cwd=outside, env=env).stdout.split()
    for path in where:
        assert Path(path).resolve().is_relative_to(venv.resolve()), where
        assert not Path(path).resolve().is_relative_to(REPO), where
    check = subprocess.run(
        [python, "-c", REQUIREMENTS_CHECK, DIST_NAME], cwd=outside, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, f"unsatisfied requirements of the wheel:\n{check.stdout}{check.stderr}"
    log("import and requirement checks passed", release["start"])


def test_console_script_trains(release):
    """``codex-jax --help``, ``configs`` and a two-step tiny training run from outside the repository."""
    venv, outside, start = release["venv"], release["outside"], release["start"]
    env = clean_env(venv)
    exe = venv / "bin" / "codex-jax"
    assert exe.is_file()
    assert not outside.resolve().is_relative_to(REPO)

    usage = run([exe, "--help"], cwd=outside, env=env).stdout
    assert "usage: codex-jax" in usage and "train" in usage
    listing = run([exe, "configs"], cwd=outside, env=env).stdout
    names = {line.split()[0] for line in listing.splitlines() if line.strip()}
    assert {"base", "tiny"} <= names, listing
    log("--help and configs ran", start)

    workdir = release["venv"].parent / "wd"
    run(
        [
            exe,
            "train",
            "--config=configs/tiny.py",
            f"--workdir={workdir}",
            "--config.train.steps=2",
            "--config.train.log_every=1",
            "--config.eval.num_batches=1",
            "--config.checkpoint.every_steps=2",
            "--config.generate.max_new_tokens=0",
            "--config.data.max_files=20",
            "--config.data.tokenizer_train_bytes=200000",
        ],
        cwd=outside,
        env=env,
    )
    log("trained two steps", start)
    steps = [p.name for p in (workdir / "checkpoints").iterdir() if p.is_dir() and p.name.isdigit()]
    assert "2" in steps, steps
    records = [json.loads(line) for line in (workdir / "metrics.ndjson").read_text().splitlines()]
    assert any(r.get("split") == "train" and "loss" in r for r in records), records[-5:]
    assert not (outside / "configs").exists()
