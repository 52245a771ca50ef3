"""Static checks of docker/Dockerfile.* and .dockerignore, without docker: what they copy exists and is in
the build context, the extras they install exist, and the entrypoint and default command name the console
script and packaged configs this checkout ships.
"""

import importlib.metadata as md
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from codex_jax import cli
from codex_jax.config import packaged as configs

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
SCRIPT = next(iter(PYPROJECT["project"]["scripts"]))


def instructions(path):
    """(INSTRUCTION, arguments) pairs of a Dockerfile: continuations joined, comments dropped."""
    out, current = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # docker also drops comment and empty lines inside a continuation
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, args = (current + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, f"{path.name}: dangling line continuation"
    return out


def final_stage(path):
    """The instructions from the last FROM on (what the image runs)."""
    found = instructions(path)
    last = max(i for i, (keyword, _) in enumerate(found) if keyword == "FROM")
    return found[last:]


def exec_form(path, keyword):
    """The JSON (exec form) argument list of the last ``keyword`` of the final stage."""
    args = [a for k, a in final_stage(path) if k == keyword]
    assert args, f"{path.name} has no {keyword}"
    assert args[-1].startswith("["), f"{path.name}: {keyword} should use the exec (JSON) form"
    return json.loads(args[-1])


def dockerignore():
    """The patterns of the repository's .dockerignore (the build context is the repository root)."""
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _pattern_regex(pattern):
    """A .dockerignore pattern as a regex; a match on a folder also matches everything inside it."""
    out, i, pattern = "", 0, pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "(?:/.*)?")


def ignored(rel, patterns):
    """Whether the context path ``rel`` is left out by ``patterns`` (later patterns and ``!`` win)."""
    result = False
    for pattern in patterns:
        if _pattern_regex(pattern.removeprefix("!")).fullmatch(rel):
            result = not pattern.startswith("!")
    return result


def copy_sources(path):
    """The build-context sources of every COPY/ADD (not ``--from`` another stage)."""
    sources = []
    for keyword, args in instructions(path):
        if keyword not in ("COPY", "ADD"):
            continue
        parts = json.loads(args) if args.startswith("[") else shlex.split(args)
        if any(p.startswith("--from") for p in parts):
            continue
        parts = [p for p in parts if not p.startswith("--")]
        assert len(parts) >= 2, f"{path.name}: {keyword} {args}"
        sources += parts[:-1]
    return sources


def pip_install_args(path):
    """The non-option arguments of every ``pip install`` in the RUN instructions."""
    found = []
    for keyword, args in instructions(path):
        if keyword != "RUN":
            continue
        command = " ".join(json.loads(args)) if args.startswith("[") else args
        for part in re.split(r"&&|\|\||;|\|", command):
            tokens = shlex.split(part)
            for i in range(len(tokens) - 1):
                if tokens[i] in ("pip", "pip3") and tokens[i + 1] == "install":
                    found += [t for t in tokens[i + 2 :] if not t.startswith("-")]
    return found


def package_files():
    """The package's source files in this checkout (what the image must get)."""
    return [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "codex_jax").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]


def test_both_dockerfiles_exist():
    """A CPU and a CUDA image are defined."""
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile.cpu", "Dockerfile.cuda"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_sources_exist_in_the_context(dockerfile):
    """Every COPY/ADD source exists, survives .dockerignore, and together they hold what pip needs."""
    patterns = dockerignore()
    sources = copy_sources(dockerfile)
    for src in sources:
        rel = src.removeprefix("./").rstrip("/") or "."
        matches = [REPO] if rel == "." else list(REPO.glob(rel))
        assert matches, f"{dockerfile.name}: COPY source {src!r} does not exist in the repository"
        if rel != ".":
            assert not ignored(rel, patterns), f"{dockerfile.name}: COPY source {src!r} is in .dockerignore"
    copied = {s.removeprefix("./").rstrip("/") or "." for s in sources}
    needed = {"pyproject.toml", "setup.py", PYPROJECT["project"]["readme"], "codex_jax", "configs"}
    assert "." in copied or needed <= copied, f"{dockerfile.name} copies {sorted(copied)}, needs {needed}"


def test_dockerignore_keeps_the_package_and_drops_clutter():
    """The package, pyproject and README stay in the context; venvs, runs, git and build output do not."""
    patterns = dockerignore()
    for rel in ["pyproject.toml", "setup.py", PYPROJECT["project"]["readme"], *package_files()]:
        assert not ignored(rel, patterns), f".dockerignore leaves out {rel}"
    clutter = [
        ".venv/bin/python",
        "runs/base/metrics.ndjson",
        ".git/HEAD",
        "codex_jax/__pycache__/cli.cpython-311.pyc",
        "codex_jax/models/__pycache__/hf.cpython-311.pyc",
        "codex_jax.egg-info/PKG-INFO",
        "build/lib/codex_jax/cli.py",
        "dist/codex_jax-0.1.0-py3-none-any.whl",
        ".gpu/whl/clu-0.0.12-py3-none-any.whl",
    ]
    for rel in clutter:
        assert ignored(rel, patterns), f".dockerignore does not leave out {rel}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_pip_installs_the_project_with_declared_extras(dockerfile):
    """``pip install .[extras]`` names extras of pyproject; other requirements name extras they have."""
    declared = set(PYPROJECT["project"].get("optional-dependencies", {}))
    local = []
    for arg in pip_install_args(dockerfile):
        project = re.fullmatch(r"\.(?:/)?(?:\[([^\]]*)\])?", arg)
        if project:
            extras = {e.strip() for e in (project.group(1) or "").split(",") if e.strip()}
            assert extras <= declared, (
                f"{dockerfile.name}: unknown extras {sorted(extras - declared)} of {arg}"
            )
            local.append(arg)
            continue
        req = Requirement(arg)
        try:
            provided = md.metadata(req.name).get_all("Provides-Extra") or []
        except md.PackageNotFoundError:
            continue  # not installed here: nothing to check it against
        missing = {canonicalize_name(e) for e in req.extras} - {canonicalize_name(e) for e in provided}
        assert not missing, f"{dockerfile.name}: {req.name} has no extras {sorted(missing)} (has {provided})"
    assert len(local) == 1, f"{dockerfile.name} should pip install the project once, found {local}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_is_the_console_script(dockerfile):
    """ENTRYPOINT runs the console script that pyproject declares (exec form, so signals reach it)."""
    assert exec_form(dockerfile, "ENTRYPOINT") == [SCRIPT]
    assert PYPROJECT["project"]["scripts"][SCRIPT] == "codex_jax.cli:main"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_default_command_trains_a_packaged_config(dockerfile, tmp_path, monkeypatch):
    """CMD is a run mode whose --config names a packaged config and whose --workdir is on a VOLUME."""
    cmd = exec_form(dockerfile, "CMD")
    assert cmd[0] in cli.RUN_MODES, cmd
    flags = dict(
        arg.removeprefix("--").split("=", 1) for arg in cmd[1:] if arg.startswith("--") and "=" in arg
    )
    assert "config" in flags and "workdir" in flags, cmd
    path = flags["config"].partition(":")[0]
    assert re.fullmatch(r"configs/\w+\.py", path), f"{dockerfile.name}: --config={path} is not configs/X.py"
    packaged = REPO / "configs" / Path(path).name  # setup.py installs configs/ as codex_jax.configs
    assert packaged.is_file(), f"{dockerfile.name}: no packaged config {packaged.relative_to(REPO)}"
    monkeypatch.chdir(tmp_path)  # as in the image: no configs/ folder in the working directory
    assert Path(configs.resolve(path)) == packaged.resolve()

    volumes = []
    for keyword, args in final_stage(dockerfile):
        if keyword == "VOLUME":
            volumes += json.loads(args) if args.startswith("[") else args.split()
    workdir = Path(flags["workdir"])
    assert any(workdir.is_relative_to(v) for v in volumes), f"{dockerfile.name}: {workdir} not in {volumes}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root_on_a_supported_python(dockerfile):
    """The final stage switches to a non-root USER, and a python:X.Y base satisfies requires-python."""
    stage = final_stage(dockerfile)
    users = [args.split(":")[0] for keyword, args in stage if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name} runs as {users[-1:] or ['root']}"
    base = stage[0][1].split()[-1]
    version = re.match(r"(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)", base)
    if version:
        assert version.group(1) in SpecifierSet(PYPROJECT["project"]["requires-python"]), base
