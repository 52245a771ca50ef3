"""Hooks: code that runs when a training step ends, an evaluation ends and a checkpoint is saved.

A hook is an object with any of the three methods of :class:`Hook`; each gets the step and a
read-only mapping of metrics (plain ints and floats, named as the metric writers name them):

=======================  ==========================================================================
method                   ``metrics``
=======================  ==========================================================================
``on_step_end``          after every optimizer step: ``train/*`` and ``system/*`` on the steps that
                         log them (``train.log_every``, the first step's ``train/compile_seconds``,
                         and the last), ``{}`` on the others
``on_eval_end``          after each held-out evaluation (step 0, ``train.eval_every``, the end):
                         ``eval/*``
``on_checkpoint_save``   when a checkpoint of the step is saved (in the background under
                         ``checkpoint.async_save``): the ``eval/*`` metrics saved with it, or ``{}``
=======================  ==========================================================================

The run's own metric writers, evaluation and checkpointing are hooks of this kind
(:mod:`codex_jax.train.builtin`) and run first, in that order. A user's hooks come from two places:
the ``train.hooks`` config key names entry points of the ``codex_jax.hooks`` group (each a hook, or a
zero-argument callable such as a :class:`Hook` subclass that makes one per run), and
``api.train(cfg, workdir, hooks=[...])`` passes hook objects. They run after the built-ins, once
all of a step's built-ins have run, so a step's checkpoint is saved before any user hook sees the
step. A user hook that raises stops the run: the saves in flight are waited for, then
``error: hook NAME failed at step N: ...`` names it and the last checkpoint (exit code 2). In a
multi-process run every process stops after that step: the failing one with that error, the others with
``error: hook of process K failed at step N: ...`` (:meth:`Hooks.settle`), none left waiting for it in
a collective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from codex_jax import plugins
from codex_jax.errors import UserError

EVENTS = ("on_step_end", "on_eval_end", "on_checkpoint_save")
Metrics = Mapping[str, float]


class Hook:
    """A hook that does nothing: subclass it and override the methods you need (``name``: how an
    error names it; default the class name)."""

    name = ""

    def on_step_end(self, step: int, metrics: Metrics) -> None:
        """After optimizer step ``step`` (``metrics``: what it logged, often ``{}``)."""

    def on_eval_end(self, step: int, metrics: Metrics) -> None:
        """After the held-out evaluation at ``step`` (``eval/*`` metrics)."""

    def on_checkpoint_save(self, step: int, metrics: Metrics) -> None:
        """After the checkpoint of ``step`` was saved (``eval/*`` metrics saved with it, or ``{}``)."""


def is_hook(obj: Any) -> bool:
    """Whether ``obj`` (not a class) has at least one hook method."""
    return not isinstance(obj, type) and any(callable(getattr(obj, m, None)) for m in EVENTS)


def check_hook(name: str, obj: Any) -> Any:
    """The check of ``codex_jax.hooks`` entry points: a hook, or a callable that makes one."""
    if not (is_hook(obj) or callable(obj)):
        raise TypeError(f"expected a hook (with {', '.join(EVENTS)}) or a callable returning one")
    return obj


def hook_name(hook: Any) -> str:
    """The name an error gives ``hook``: its ``name`` attribute, else its class name."""
    return getattr(hook, "name", "") or type(hook).__name__


def user_hooks(names: str, given: Sequence[Any] = ()) -> list[tuple[str, Any]]:
    """``(name, hook)`` for each entry point ``names`` lists (``train.hooks``; one new hook per run),
    then each of ``given`` (the API's). A name not installed, an entry point that failed to load or
    a factory that fails is a UserError naming ``train.hooks``."""
    group = plugins.load(plugins.HOOKS, check_hook)
    out = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if name in group.failed:
            raise UserError(f"config key 'train.hooks': hook {name!r} failed to load: {group.failed[name]}")
        if name not in group.loaded:
            installed = ", ".join(sorted(group.loaded)) or "none"
            raise UserError(
                f"config key 'train.hooks': no hook {name!r} is installed (installed: {installed}; "
                "codex-jax plugins lists them)"
            )
        out.append((name, _instance(name, group.loaded[name])))
    for hook in given:
        if not is_hook(hook):
            raise UserError(f"hooks: {hook!r} has none of the hook methods ({', '.join(EVENTS)})")
        out.append((hook_name(hook), hook))
    return out


def _instance(name: str, obj: Any) -> Any:
    if is_hook(obj):
        return obj
    try:
        hook = obj()
    except Exception as e:  # noqa: BLE001 - any failure of the user's factory is one error line
        raise UserError(f"config key 'train.hooks': hook {name!r} could not be created: {_why(e)}") from e
    if not is_hook(hook):
        raise UserError(f"config key 'train.hooks': hook {name!r} made {hook!r}, which has no hook methods")
    return hook


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def read_only(metrics: Mapping[str, Any]) -> Metrics:
    """A read-only copy of ``metrics`` whose values are plain Python numbers (numpy scalars unwrapped)."""
    return MappingProxyType({k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()})


class HookFailed(Exception):
    """A user hook raised: the run stops (the loop waits for its saves, then reports it)."""

    def __init__(self, name: str, step: int, cause: Exception | str):
        why = cause if isinstance(cause, str) else _why(cause)
        super().__init__(f"hook {name} failed at step {step}: {why}")
        self.name, self.step = name, step


def _raise_if_failed_anywhere(failed: HookFailed | None, step: int) -> None:
    """Raises ``failed`` (this process's user hook failed at ``step``), or, in a multi-process run, a
    HookFailed naming the process whose hook did: every process learns it in one tiny all-gather (call it
    at the same steps on all of them), so none waits for a failed one in the next collective."""
    if jax.process_count() > 1:
        flags = np.asarray(multihost_utils.process_allgather(np.int32(failed is not None)))
        if failed is None and flags.any():
            process = int(np.argmax(flags))
            raise HookFailed(f"of process {process}", step, "its error is in that process's output")
    if failed is not None:
        raise failed


@dataclasses.dataclass
class Hooks:
    """Sends each event to the built-in hooks at once, in order, and to the user's hooks once the
    outermost event is done (a step's built-ins, saving included, all run before any user hook)."""

    builtin: list[Any]
    user: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    # With defer_failures (several processes): the first user hook failure, raised by settle().
    failed: HookFailed | None = None
    defer_failures: bool = False
    _pending: list[tuple[str, int, Metrics]] = dataclasses.field(default_factory=list)
    _depth: int = 0

    def settle(self, step: int) -> None:
        """Multi-process (``defer_failures``): raises on every process if a user hook failed on any, up to
        ``step`` (all processes call it at the same points); one process raised at once already."""
        if self.defer_failures:
            _raise_if_failed_anywhere(self.failed, step)

    def step_end(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Optimizer step ``step`` ended (``metrics``: what it logged)."""
        self._emit("on_step_end", step, metrics)

    def eval_end(self, step: int, metrics: Mapping[str, Any]) -> None:
        """The evaluation at ``step`` ended (``eval/*`` metrics)."""
        self._emit("on_eval_end", step, metrics)

    def checkpoint_save(self, step: int, metrics: Mapping[str, Any]) -> None:
        """The checkpoint of ``step`` was saved (with these ``eval/*`` metrics)."""
        self._emit("on_checkpoint_save", step, metrics)

    def _emit(self, event: str, step: int, metrics: Mapping[str, Any]) -> None:
        view = read_only(metrics)
        self._pending.append((event, step, view))
        self._depth += 1
        try:
            for hook in self.builtin:
                method = getattr(hook, event, None)
                if method is not None:
                    method(step, view)
        finally:
            self._depth -= 1
        if self._depth == 0:
            pending, self._pending = self._pending, []
            for args in pending:
                self._run_user(*args)

    def _run_user(self, event: str, step: int, view: Metrics) -> None:
        for name, hook in self.user:
            method = getattr(hook, event, None)
            if method is None or self.failed is not None:
                continue
            try:
                method(step, view)
            except Exception as e:  # noqa: BLE001 - any failure of a user's hook stops the run the same way
                if not self.defer_failures:
                    raise HookFailed(name, step, e) from e
                self.failed = HookFailed(name, step, e)
                self.failed.__cause__ = e  # as `raise ... from e` sets it, for settle() to raise it later
