"""Command-line entry point: ``python -m codex_jax.main --config=configs/base.py [--mode=...]``.

Modes: ``train`` (default; resumes from the workdir's latest checkpoint), ``eval`` (restores params only and
prints one JSON line), ``generate`` (prints completions of ``generate.prompt``), ``export`` (writes a
checkpoint in ``export.format`` to ``export.dir``), ``eval-code`` (pass@k of completions run against tests in
a sandbox; one JSON line).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from codex_jax import api
from codex_jax.config import modes, saved_run
from codex_jax.config.packaged import missing_config, resolve
from codex_jax.config.runspec import RUN_CONFIG
from codex_jax.errors import EXIT_USER_ERROR, UserError
from codex_jax.files import absolute
from codex_jax.train.stop import EXIT_STOPPED, Stopped

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path of an ml_collections config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config file stem>).")
flags.DEFINE_enum("mode", "train", ["train", "eval", "generate", "export", "eval-code"], "What to do.")


def fail(message: str) -> None:
    """Prints ``error: message`` as one line and exits with code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def with_packaged_configs(argv: list[str]) -> list[str]:
    """``argv`` with ``--config=configs/NAME.py`` pointing at the packaged config when no such file exists,
    ``--config=RUN/config.json`` (and ``--workdir=RUN`` without ``--config``, RUN holding a run) loading
    that run's saved config; a config file that does not exist is one ``error:`` line."""
    out = list(argv)
    found = False
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + _config_spec(arg.removeprefix("--config="))
            found = True
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = _config_spec(out[i + 1])
            found = True
    workdir = _flag_value(out, "workdir")
    if not found and workdir and (Path(workdir).expanduser() / RUN_CONFIG).is_file():
        out.insert(1, f"--config={saved_run.LOADER}:{os.path.abspath(Path(workdir).expanduser())}")
    return out


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=V`` (or ``--name V``) in ``argv``, or None."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _config_spec(spec: str) -> str:
    """``--config``'s value as ml_collections should load it (a one-line error for a missing file)."""
    path = Path(spec.partition(":")[0]).expanduser()
    if path.name == RUN_CONFIG and path.is_file():
        return f"{saved_run.LOADER}:{os.path.abspath(path.parent)}"
    if path.is_dir() and (path / RUN_CONFIG).is_file():
        return f"{saved_run.LOADER}:{os.path.abspath(path)}"
    resolved = resolve(spec)
    if (why := missing_config(resolved.partition(":")[0])) is not None:
        fail(f"--config={spec}: {why}")
    return resolved


def saved_run_dir() -> str | None:
    """The run whose saved config ``--config`` loaded (``--workdir=RUN`` alone, ``--config=RUN/config.json``),
    or None."""
    loader, _, run = config_filename().partition(":")
    return run if Path(loader) == saved_run.LOADER else None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing whose failures (bad override, unknown key, bad file) are one ``error:`` line."""
    global _OVERRIDES
    _OVERRIDES = modes.override_keys(argv)
    try:
        return FLAGS(with_packaged_configs(argv))
    except UserError as e:  # a run's config.json that cannot be read
        fail(str(e))
    except flags.Error as e:
        text = " ".join(str(e).split())
        if "Error whilst parsing config file" in text:  # the config file's get_config raised
            spec = _flag_value(argv, "config") or ""
            fail(f"--config={spec}: {text.rsplit('Error: ', 1)[-1]}")
        fail(text)
    except (KeyError, AttributeError) as e:
        text = str(e.args[0] if e.args else e).replace("\\n", "\n").replace("\\'", "'")
        name, _, hint = text.partition("\n")  # ConfigDict's KeyError: 'name'\nDid you mean "..." instead...?
        name = name.strip("\"'")
        hint = hint.rstrip("'")  # the end of the quoted key error
        hint = f"; {hint[0].lower()}{hint[1:]}" if hint else ""
        bad = [a for a in argv if a.startswith("--config.") and name in a.split("=")[0]]
        flag = bad[0] if bad else "--config"
        fail(f"{flag}: unknown config key '{name}' (see docs/reference/config.md{hint})")
    except (ValueError, TypeError, SyntaxError, OSError) as e:
        fail(f"--config: {' '.join(str(e).split())}")
    return []


_OVERRIDES: list[str] = []  # the keys of the last parse's --config.KEY=V overrides


def parse_config_flags(argv: list[str]):
    """``(config, leftover arguments)`` of ``argv`` (``[program, --config=..., --config.KEY=V, ...]``)
    parsed as a run parses them, with the same one-line errors (exit 2). Callable more than once in a
    process: the flags of an earlier parse are forgotten first."""
    sys.argv = list(argv)  # ml_collections finds the --config.KEY overrides in sys.argv
    for name in [n for n in FLAGS if n.startswith("config.")]:
        delattr(FLAGS, name)  # the overrides an earlier parse defined
    FLAGS.unparse_flags()
    leftover = parse_flags(argv)
    return load_config(), leftover[1:]


def load_config():
    """The config named by ``--config`` (loaded lazily by ml_collections), or a one-line error."""
    if not FLAGS["config"].present:
        where = f"{FLAGS.workdir} holds no run ({RUN_CONFIG}); " if FLAGS["workdir"].present else ""
        fail(
            f"{where}--config is required (e.g. --config=configs/base.py), or --workdir=RUN of a trained run"
        )
    try:
        cfg = FLAGS.config
        cfg.get("seed")
        return cfg
    except Exception as e:  # noqa: BLE001 - any failure of the user's config file is reported the same way
        cause = e.__cause__ or e
        fail(f"--config={config_filename()}: cannot load ({' '.join(str(cause).split())})")


def config_filename() -> str:
    """The file ``--config`` named (after resolving packaged configs)."""
    return FLAGS["config"].config_filename  # type: ignore[attr-defined]  # ml_collections' config flag


def default_workdir(config_path: str) -> Path:
    """``runs/<config file stem>``: where a run goes without ``--workdir``."""
    return Path("runs") / Path(config_path).stem


def run(argv: list[str]) -> None:
    """Validates the config, then dispatches on ``--mode``."""
    del argv
    if not FLAGS["verbosity"].present:  # Orbax and jax log every save at INFO; keep the console readable
        absl_logging.set_verbosity(absl_logging.WARNING)
    cfg = load_config()
    from_run = saved_run_dir()
    workdir = absolute(FLAGS.workdir or from_run or default_workdir(config_filename()))  # a folder or gs://
    try:
        if from_run and FLAGS.mode != "train":
            modes.check_followup_overrides(FLAGS.mode, from_run, _OVERRIDES)
        _dispatch(cfg, workdir, FLAGS.mode)
    except UserError as e:
        fail(str(e))
    except Stopped as e:  # SIGTERM/SIGINT: the step is saved; the line says how to resume
        print(str(e), file=sys.stderr)
        sys.exit(EXIT_STOPPED)


def _dispatch(cfg, workdir: Path, mode: str) -> None:
    if mode == "train":
        print(json.dumps(api.train(cfg, workdir)))
        print(f"workdir: {absolute(workdir)} (checkpoints/, metrics.ndjson, tensorboard/, config.json)")
    elif mode == "eval":
        print(json.dumps(api.evaluate(cfg, workdir)))
        if cfg.eval.functional_correctness:
            print(json.dumps(api.eval_code(cfg, workdir)))
    elif mode == "eval-code":
        print(json.dumps(api.eval_code(cfg, workdir)))
    elif mode == "generate":
        for text in api.generate(cfg, workdir):
            print(text)
    elif mode == "export":
        print(f"exported ({cfg.export.format}): {api.export(cfg, workdir)}")


def main() -> None:
    """Console entry (also used by ``python -m codex_jax.main``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
