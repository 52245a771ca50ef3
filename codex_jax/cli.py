"""The ``codex-jax`` console script: ``codex-jax train|eval|generate|export --config=... [--config.x=v]``.

``codex-jax train ...`` is the same as ``python -m codex_jax.main --mode=train ...``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from codex_jax import cli_compile, cli_config, cli_models, cli_plugins, cli_prepare, cli_serve
from codex_jax import main as main_lib
from codex_jax.config import modes
from codex_jax.config import packaged as configs
from codex_jax.metrics import plot
from codex_jax.safety import cli as safety_cli
from codex_jax.tokenizers import cli as tokenizer_cli

USAGE = """usage: codex-jax COMMAND [flags]

commands:
  train      train (or resume) a model:   codex-jax train --config=configs/base.py --workdir=RUN
  eval       evaluate a checkpoint:        codex-jax eval --workdir=RUN
  generate   sample from a checkpoint:     codex-jax generate --workdir=RUN --config.generate.prompt='...'
  export     write a checkpoint elsewhere: codex-jax export --workdir=RUN --config.export.dir=DIR
  eval-code  pass@k (tests in a sandbox):  codex-jax eval-code --workdir=RUN
  tokenizer  train|encode|decode|inspect|export a tokenizer: codex-jax tokenizer --help
  safety     find secrets in files:        codex-jax safety scan PATH... [--policy=FILE]
  plugins    list installed plugins:       codex-jax plugins [--json]
  models     families and model presets:   codex-jax models [--json]
  configs    list the packaged configs:    codex-jax configs [--paths]
  config     print|validate|diff configs:  codex-jax config print --config=configs/tiny.py
  plot       loss/lr/throughput PNG:       codex-jax plot WORKDIR... [--out PNG]
  compile    TPU memory/FLOPs, no TPU:     codex-jax compile --config=configs/gpt2_small.py --topology=v5e:2x2
  prepare    token cache by Apache Beam:   codex-jax prepare --config=configs/base.py [--runner=DirectRunner]
  serve      OpenAI-compatible HTTP API:   codex-jax serve --workdir=RUN [--port=8000] [--slots=8]

Flags: --config=FILE, --config.KEY=VALUE overrides, --workdir=DIR. A packaged config is found by name from
any directory (--config=configs/base.py, --config=base). After training, --workdir=RUN alone names the run
(its saved config). codex-jax COMMAND --help: that command's flags and the config sections it reads.
Every config key: docs/reference/config.md.
"""

RUN_MODES = ("train", "eval", "generate", "export", "eval-code")


def _compile(argv: list[str]) -> int:
    cli_compile.main([sys.argv[0], *argv])  # an absl app: it exits itself
    return 0


# Subcommands that take their own arguments: name -> main(argv after the name) -> exit code.
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "tokenizer": tokenizer_cli.main,
    "safety": safety_cli.main,
    "plugins": cli_plugins.main,
    "models": cli_models.main,
    "configs": configs.main,
    "config": cli_config.main,
    "plot": plot.main,
    "compile": _compile,
    "prepare": cli_prepare.main,
    "serve": cli_serve.main,
}


def main(argv: list[str] | None = None) -> None:
    """Dispatches to the subcommand named by the first argument."""
    argv = list(sys.argv if argv is None else argv)
    command = argv[1] if len(argv) > 1 else "--help"
    if command in ("-h", "--help", "help"):
        print(USAGE)
        return
    if command in SUBCOMMANDS:
        sys.exit(SUBCOMMANDS[command](argv[2:]))
    if command in RUN_MODES and any(a in ("-h", "--help", "--helpfull") for a in argv[2:]):
        print(modes.command_help(command))
        return
    if command in RUN_MODES:
        sys.argv = [argv[0], f"--mode={command}", *argv[2:]]
        main_lib.main()
        return
    print(f"error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
