"""Multi-host start-up: ``jax.distributed.initialize`` from the ``dist.*`` keys or the platform's own."""

from __future__ import annotations

import os
import sys

import jax
import ml_collections

from codex_jax.errors import UserError


def _cluster_detected() -> bool:
    """True on a multi-process SLURM job or a multi-host TPU slice (where jax auto-detects the peers)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def _cpu_collectives() -> None:
    """CPU-only runs use gloo for cross-process collectives (accelerators bring their own)."""
    # jax registers its config flags as attributes at runtime, which its stubs do not declare.
    platforms = jax.config.jax_platforms  # type: ignore[attr-defined]
    if platforms == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(dist_cfg: ml_collections.ConfigDict) -> None:
    """Joins the processes of a multi-host run; a no-op for a single process."""
    if dist_cfg.coordinator_address:
        n, pid = dist_cfg.num_processes, dist_cfg.process_id
        if n < 1 or not 0 <= pid < n:
            raise UserError(
                f"config key 'dist.process_id': need 0 <= process_id < num_processes (got {pid} of {n})"
            )
        _cpu_collectives()
        jax.distributed.initialize(dist_cfg.coordinator_address, num_processes=n, process_id=pid)
    elif _cluster_detected():
        _cpu_collectives()
        jax.distributed.initialize()
    else:
        return
    print(
        f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
        f"device(s), {jax.device_count()} in all",
        file=sys.stderr,
    )
