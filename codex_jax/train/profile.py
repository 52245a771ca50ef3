"""Optional profiler trace of training steps [a, b) (``train.profile_steps='a,b'``) into workdir/profile/."""

from __future__ import annotations

import sys
from pathlib import Path

import jax

from codex_jax.errors import UserError


class Profiler:
    """Starts a jax profiler trace before step ``a`` and stops it after step ``b - 1``."""

    def __init__(self, spec: str, logdir: Path):
        self.first = self.end = 0
        self.logdir = logdir
        if spec:
            try:
                self.first, self.end = (int(x) for x in spec.split(","))
            except ValueError:
                raise UserError(f"config key 'train.profile_steps': expected 'a,b' (got {spec!r})") from None
            if not 0 < self.first < self.end:
                raise UserError(f"config key 'train.profile_steps': need 0 < a < b (got {spec!r})")
        self.active = False

    def before(self, step: int) -> None:
        if self.end and step == self.first:
            self.logdir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.logdir))
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step == self.end - 1:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
            print(
                f"profile of steps [{self.first}, {self.end}) written to {self.logdir}",
                file=sys.stderr,
            )
