"""GRPO reward plugins: ``codex_jax.rewards`` entry points, each ``fn(prompt, completion, passed) ->
float`` added to the tests' reward of every completion (``train.grpo.rewards='NAME,...'``)."""

from __future__ import annotations

from collections.abc import Callable

from codex_jax import plugins
from codex_jax.errors import UserError


def reward_functions(names: str) -> list[Callable]:
    """The reward functions ``names`` lists; a name not installed or one that failed to load is a
    UserError naming ``train.grpo.rewards``."""
    group = plugins.load(plugins.REWARDS, plugins.callable_plugin)
    out = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if name in group.failed:
            raise UserError(
                f"config key 'train.grpo.rewards': reward {name!r} failed to load: {group.failed[name]}"
            )
        if name not in group.loaded:
            installed = ", ".join(sorted(group.loaded)) or "none"
            raise UserError(
                f"config key 'train.grpo.rewards': no reward {name!r} is installed (installed: {installed})"
            )
        out.append(group.loaded[name])
    return out
