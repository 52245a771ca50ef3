"""``codex-jax prepare --config=... [--workdir=DIR] [--shard_tokens=N] [Beam options]``: the run's token cache
built by an Apache Beam pipeline (:mod:`codex_jax.prepare.run`). Every other ``--flag`` is a Beam pipeline
option (``--runner``, ``--direct_num_workers``, Dataflow's ``--project``/``--region``/``--temp_location``...);
by default the DirectRunner in 2 processes."""

from __future__ import annotations

import json
import sys

from codex_jax import main as main_lib
from codex_jax.errors import EXIT_USER_ERROR, UserError
from codex_jax.files import absolute, as_path

USAGE = __doc__

_OURS = ("--config", "--workdir", "--verbosity")


def main(argv: list[str]) -> int:
    """Prepares the cache and prints its summary as one JSON line; returns the exit code."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    ours = [a for a in argv if a.split("=", 1)[0].split(".", 1)[0] in _OURS]
    shard = [a for a in argv if a.startswith("--shard_tokens=")]
    beam_args = [a for a in argv if a not in ours and a not in shard]
    try:
        cfg, leftover = main_lib.parse_config_flags(["codex-jax prepare", *ours])
        if leftover:
            raise UserError(f"codex-jax prepare: unexpected arguments {' '.join(leftover)}")
        workdir = as_path(main_lib.FLAGS.workdir or main_lib.default_workdir(main_lib.config_filename()))
        shard_tokens = _shard_tokens(shard)
        from codex_jax.prepare.run import prepare

        summary = prepare(cfg, workdir, beam_args, shard_tokens)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json.dumps(summary))
    print(f"workdir: {absolute(workdir)} (cache/: ArrayRecord shards and key.json; train with --workdir)")
    return 0


def _shard_tokens(flags: list[str]) -> int:
    """``--shard_tokens=N`` (tokens per output shard), or the default."""
    from codex_jax.data.cache_shards import SHARD_TOKENS

    if not flags:
        return SHARD_TOKENS
    value = flags[-1].split("=", 1)[1]
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"--shard_tokens={value}: expected a positive number of tokens")
    return int(value)
