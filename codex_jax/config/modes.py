"""What each command reads of a run config, and which keys a follow-up command (eval, generate, export,
eval-code, ...) may change on a trained run: the run's saved config fixes the rest.

``codex-jax COMMAND --help`` lists :data:`SECTIONS`; :func:`check_followup_overrides` refuses an
override of a key that would change the trained model (one line naming it).
"""

from __future__ import annotations

import textwrap

from codex_jax.config.schema import SCHEMA
from codex_jax.errors import UserError

# The config sections each command reads (its --help lists them with their keys' count).
_RUN_TIME = ("runtime", "parallel", "dist")
SECTIONS: dict[str, tuple[str, ...]] = {
    "train": (
        "seed",
        "data",
        "model",
        "lora",
        "train",
        "eval",
        "checkpoint",
        *_RUN_TIME,
        "logging",
        "generate",
    ),
    "eval": ("data", "model", "lora", "eval", "codeeval", "checkpoint", *_RUN_TIME),
    "generate": ("data", "model", "lora", "eval", "generate", "checkpoint", *_RUN_TIME),
    "export": ("data", "model", "lora", "eval", "export", "checkpoint", *_RUN_TIME),
    "eval-code": ("data", "model", "lora", "eval", "codeeval", "checkpoint", *_RUN_TIME),
}

# What a follow-up command may override on a trained run: whole sections, and single keys elsewhere.
_FREE_SECTIONS = ("eval", "codeeval", "generate", "export", "checkpoint", "logging", *_RUN_TIME)
FREE_KEYS = (
    "data.batch_size",
    "data.eval_source",
    "data.num_workers",
    "data.prefetch",
    "data.cache_workers",
    "data.on_bad_record",
    "model.dtype",
    "model.attention_impl",
    "model.remat",
    "model.grad_barriers",
    "model.loss_chunk",
)


def followup_may_change(key: str) -> bool:
    """Whether a follow-up command may override ``key`` of a trained run's config."""
    return key.split(".")[0] in _FREE_SECTIONS or key in FREE_KEYS


def override_keys(argv: list[str]) -> list[str]:
    """The keys of the ``--config.KEY=V`` (or ``--config.KEY V``) overrides in ``argv``."""
    keys = []
    for arg in argv:
        if arg.startswith("--config.") or arg.startswith("--noconfig."):
            keys.append(arg.split("=", 1)[0].removeprefix("--no").removeprefix("--").removeprefix("config."))
    return keys


def check_followup_overrides(command: str, run: str, keys: list[str]) -> None:
    """Refuses an override that would change the model trained in ``run`` (UserError naming it)."""
    for key in keys:
        if key in SCHEMA and not followup_may_change(key):
            free = ", ".join(f"{s}.*" for s in _FREE_SECTIONS)
            raise UserError(
                f"--config.{key}: {command} cannot change a key the run in {run} was trained with "
                f"({command} may override {free} and {', '.join(FREE_KEYS)}); to train with it, "
                "use a new --workdir"
            )


def sections_help(command: str) -> str:
    """The config sections ``command`` reads, one line each with its keys (from the schema)."""
    lines = []
    for section in SECTIONS.get(command, ()):
        keys = [k for k in SCHEMA if k == section or k.startswith(section + ".")]
        names = ", ".join(k.removeprefix(section + ".") for k in keys)
        lines.append(
            textwrap.fill(names, 105, initial_indent=f"  {section:11s} ", subsequent_indent=" " * 14)
        )
    return "\n".join(lines)


_WHAT = {
    "train": "train a model, or resume the run in --workdir",
    "eval": "held-out metrics of a trained run's checkpoint (one JSON line)",
    "generate": "completions of generate.prompt by a trained run's checkpoint",
    "export": "write a trained run's checkpoint as export.format to export.dir",
    "eval-code": "pass@k of a trained run on codeeval.problems, tests run in a sandbox (one JSON line)",
}


def command_help(command: str) -> str:
    """``codex-jax COMMAND --help``: what it does, its flags, and the config sections it reads."""
    if command == "train":
        flags = (
            "  --config=FILE[:ARG]    a config file (a packaged one by name: --config=configs/base.py) or\n"
            "                         RUN/config.json; without it, --workdir=RUN of a run resumes it\n"
            "  --config.KEY=VALUE     override one key (see the sections below)\n"
            "  --workdir=DIR          where the run goes (default: runs/<config file stem>)"
        )
    else:
        free = ", ".join([*(f"{s}.*" for s in _FREE_SECTIONS), *FREE_KEYS])
        indent = " " * 25
        flags = (
            "  --workdir=RUN          the trained run: its saved config.json is the config\n"
            f"  --config.KEY=VALUE     override a key {command} may change (the others are the run's):\n"
            f"{textwrap.fill(free, 105, initial_indent=indent, subsequent_indent=indent)}\n"
            "  --config=FILE[:ARG]    a config file instead (it must agree with the run on model and data)"
        )
    return (
        f"usage: codex-jax {command} [--workdir=RUN] [--config=FILE] [--config.KEY=VALUE ...]\n\n"
        f"{_WHAT[command]}\n\nflags:\n{flags}\n\n"
        f"config sections {command} reads (codex-jax config print --workdir=RUN shows the values):\n"
        f"{sections_help(command)}"
    )
