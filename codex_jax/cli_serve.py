"""``codex-jax serve``: an OpenAI-compatible HTTP server for a run's checkpoint or a Hugging Face folder.

    codex-jax serve --workdir=RUN [--config=FILE --config.KEY=V ...] [--port=8000] [--slots=8]
    codex-jax serve --model=hf:FOLDER

Without ``--config`` the run's own config.json is used.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from codex_jax import main as main_lib
from codex_jax.config.runspec import run_config
from codex_jax.errors import UserError
from codex_jax.serve.load import from_hf_folder, from_workdir
from codex_jax.serve.run import serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codex-jax serve", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", help="the run whose checkpoint (eval.step) is served")
    p.add_argument("--model", help="hf:FOLDER: serve a Hugging Face folder instead of a run")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; default 8000)")
    p.add_argument("--slots", type=int, default=8, help="sequences decoded together (default 8)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait (default 64)")
    p.add_argument("--context", type=int, default=0, help="tokens per slot (default: the model's)")
    p.add_argument("--api-key", default=os.environ.get("CODEX_JAX_API_KEY"), help="require this bearer token")
    return p


def main(argv: list[str]) -> int:
    """Parses ``argv`` (after ``serve``), loads the model and serves until SIGTERM; the exit code."""
    args, rest = _parser().parse_known_args(argv)
    try:
        if args.model:
            if not args.model.startswith("hf:") or args.workdir or rest:
                raise UserError(
                    "--model=hf:FOLDER serves a Hugging Face folder alone (no --workdir/--config)"
                )
            served = from_hf_folder(args.model.removeprefix("hf:"))
        else:
            if not args.workdir:
                raise UserError("serve needs --workdir=RUN (or --model=hf:FOLDER)")
            workdir = Path(args.workdir)
            if any(a.startswith("--config") for a in rest):
                cfg, leftover = main_lib.parse_config_flags(["codex-jax serve", *rest])
                if leftover:
                    raise UserError(f"serve: unknown arguments {leftover}")
            elif rest:
                raise UserError(f"serve: unknown arguments {rest}")
            else:
                cfg = run_config(workdir)
            served = from_workdir(cfg, workdir)
        serve(
            served,
            host=args.host,
            port=args.port,
            slots=args.slots,
            max_queue=args.max_queue,
            context=args.context,
            api_key=args.api_key,
        )
    except UserError as e:
        main_lib.fail(str(e))
    return 0
