"""``codex-jax compile --config=FILE --topology=v5e:2x2 [--config.KEY=V]``: the config's train step
compiled for a TPU topology on this machine (``codex_jax/tpu_compile.py``); prints one JSON line: per-chip
memory, whether it fits, FLOPs per step and the roofline step time. Needs libtpu:
``pip install 'codex-jax[tpu-compile]'``."""

from __future__ import annotations

import contextlib
import json
import os
import sys

from absl import app, flags

from codex_jax import main as main_lib
from codex_jax import tpu_compile
from codex_jax.config.validation import validate
from codex_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("topology", "v5e:2x2", "TPU topology to compile for: GENERATION:AxB (v4, v5e, v5p, v6e).")


def run(argv: list[str]) -> None:
    """Loads and validates the config for the topology's chips, compiles, prints the JSON line."""
    if len(argv) > 1:
        main_lib.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    cfg = main_lib.load_config()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
            chips = len(tpu_compile.topology_devices(FLAGS.topology))
            validate(cfg, num_devices=chips)
            result = tpu_compile.compile_train_step(cfg, FLAGS.topology)
    except UserError as e:
        main_lib.fail(str(e))
    print(json.dumps({"config": main_lib.config_filename(), **result}), flush=True)


def main(argv: list[str]) -> None:
    """Runs ``codex-jax compile`` with ``argv`` (its flags); compiles for TPU whatever this host has."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(run, argv=argv, flags_parser=main_lib.parse_flags)
