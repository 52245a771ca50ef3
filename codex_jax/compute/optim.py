"""The optimizer: a warmup schedule, global-norm clipping, one of four update rules, an optional EMA of the
parameters, and accumulation.

Update rules (``train.optimizer``): ``adamw`` (decay mask: no norms, biases or embeddings), ``adafactor``
(factored second moments), ``lion`` and ``muon`` (optax's: Newton-Schulz orthogonalised momentum for the
hidden weight matrices, AdamW for embeddings, the output head, norms and biases). Schedules
(``train.schedule``): ``cosine``, ``linear``, ``constant`` and ``wsd`` (warmup-stable-decay), each after a
linear warmup.

It is built from an :class:`OptimizerSpec` (plain values, never the run's ConfigDict); the run level makes
one from ``train.*`` with :meth:`OptimizerSpec.from_mapping`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import contrib

OPTIMIZERS = ("adamw", "adafactor", "lion", "muon")
SCHEDULES = ("cosine", "linear", "constant", "wsd")


def accumulates_with_multisteps(grad_accum_steps: int, accum_impl: str = "multisteps") -> bool:
    """Whether the optimizer is wrapped in optax.MultiSteps (its state then has MultiSteps' structure)."""
    return grad_accum_steps > 1 and accum_impl == "multisteps"


def opt_state_layout(train: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes the optimizer state's tree structure, from a ``train`` section (a config's, or a saved
    checkpoint's dict: keys it predates take their defaults). Two runs with different layouts cannot share
    a checkpoint's optimizer state."""
    optimizer = train.get("optimizer", "adamw")
    layout = {
        "train.optimizer": optimizer,
        "train.ema_decay > 0": train.get("ema_decay", 0.0) > 0,
        "train.grad_clip > 0": train["grad_clip"] > 0,
        "optax.MultiSteps (train.grad_accum_steps > 1 with train.accum_impl='multisteps')": (
            accumulates_with_multisteps(train["grad_accum_steps"], train.get("accum_impl", "multisteps"))
        ),
    }
    if optimizer == "adafactor":
        # its optional parts are links of optax's chain, and factoring shapes its moments
        a = {**dataclasses.asdict(AdafactorSpec()), **dict(train.get("adafactor", {}))}
        layout["train.adafactor.min_dim_size_to_factor"] = a["min_dim_size_to_factor"]
        for key in ("clipping_threshold", "momentum", "weight_decay_rate"):
            layout[f"train.adafactor.{key} > 0"] = a[key] > 0
        layout["train.adafactor.multiply_by_parameter_scale"] = a["multiply_by_parameter_scale"]
    return layout


@dataclasses.dataclass(frozen=True)
class AdafactorSpec:
    """``train.adafactor.*``: optax.adafactor's knobs."""

    decay_rate: float = 0.8
    min_dim_size_to_factor: int = 128
    clipping_threshold: float = 1.0  # 0: off
    multiply_by_parameter_scale: bool = False
    momentum: float = 0.0  # 0: none
    weight_decay_rate: float = 0.0  # 0: none


@dataclasses.dataclass(frozen=True)
class LionSpec:
    """``train.lion.*``: Lion's two momentum rates."""

    b1: float = 0.9
    b2: float = 0.99


@dataclasses.dataclass(frozen=True)
class MuonSpec:
    """``train.muon.*``: the Muon part's peak learning rate, momentum and Newton-Schulz iterations."""

    learning_rate: float = 0.02
    beta: float = 0.95
    ns_steps: int = 5
    nesterov: bool = True


_SECTIONS = {"adafactor": AdafactorSpec, "lion": LionSpec, "muon": MuonSpec}


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What the optimizer is made of: the ``train.*`` values it reads, and nothing else."""

    learning_rate: float
    warmup_steps: int
    steps: int
    min_lr_ratio: float
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    grad_accum_steps: int = 1
    accum_impl: str = "multisteps"
    optimizer: str = "adamw"
    schedule: str = "cosine"
    wsd_decay_fraction: float = 0.1
    ema_decay: float = 0.0  # 0: no EMA of the parameters
    adafactor: AdafactorSpec = AdafactorSpec()
    lion: LionSpec = LionSpec()
    muon: MuonSpec = MuonSpec()

    @classmethod
    def from_mapping(cls, train: Mapping[str, Any]) -> OptimizerSpec:
        """The spec of a ``train`` section (a ConfigDict or a saved config's dict; keys it lacks keep their
        defaults)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in train:
                continue
            if f.name in _SECTIONS:
                section = _SECTIONS[f.name]
                given = train[f.name]
                values[f.name] = section(
                    **{g.name: given[g.name] for g in dataclasses.fields(section) if g.name in given}
                )
            else:
                values[f.name] = train[f.name]
        return cls(**values)

    @property
    def uses_multisteps(self) -> bool:
        """True when micro-steps accumulate inside optax.MultiSteps (one jitted call per micro-batch)."""
        return accumulates_with_multisteps(self.grad_accum_steps, self.accum_impl)

    @property
    def scan_steps(self) -> int:
        """Micro-batches each jitted train step takes: K under ``accum_impl='scan'``, else 1."""
        return self.grad_accum_steps if self.accum_impl == "scan" else 1


def learning_rate_schedule(spec: OptimizerSpec, peak: float | None = None) -> optax.Schedule:
    """Linear warmup to ``peak`` (default ``learning_rate``) over ``warmup_steps``, then ``spec.schedule``:

    - ``cosine``: cosine decay to ``peak * min_lr_ratio`` at ``steps``;
    - ``linear``: linear decay to ``peak * min_lr_ratio`` at ``steps``;
    - ``constant``: ``peak`` to the end;
    - ``wsd``: ``peak`` until the last ``wsd_decay_fraction`` of ``steps``, then linear decay to
      ``peak * min_lr_ratio`` at ``steps``.

    Counts optimizer steps (not micro-steps): under ``optax.MultiSteps`` the inner optimizer only advances on
    real updates.
    """
    peak = spec.learning_rate if peak is None else peak
    end = peak * spec.min_lr_ratio
    if spec.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=spec.warmup_steps,
            decay_steps=max(spec.steps, spec.warmup_steps + 1),
            end_value=end,
        )
    after = max(spec.steps - spec.warmup_steps, 1)  # steps after the warmup
    if spec.schedule == "linear":
        rest = optax.linear_schedule(peak, end, after)
    elif spec.schedule == "constant":
        rest = optax.constant_schedule(peak)
    elif spec.schedule == "wsd":
        decay = min(max(round(spec.wsd_decay_fraction * spec.steps), 1), after)
        rest = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, end, decay)], [after - decay]
        )
    else:
        raise ValueError(f"unknown schedule {spec.schedule!r} (one of {', '.join(SCHEDULES)})")
    if spec.warmup_steps == 0:
        return rest
    warmup = optax.linear_schedule(0.0, peak, spec.warmup_steps)
    return optax.join_schedules([warmup, rest], [spec.warmup_steps])


def _names(path) -> list[str]:
    return [str(getattr(p, "key", p)) for p in path]


def decay_mask(params):
    """True for weight matrices that get weight decay: not norms, biases or embeddings."""

    def is_decayed(path, leaf) -> bool:
        return leaf.ndim >= 2 and not any("embed" in n for n in _names(path))

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def muon_dimension_numbers(params):
    """Muon's weights: every 2-D matrix but the embeddings and the output head (``lm_head``), each
    orthogonalised over (input, output) axes; None for the rest, which AdamW updates."""

    def dims(path, leaf):
        names = _names(path)
        hidden = leaf.ndim == 2 and not any("embed" in n or n == "lm_head" for n in names)
        return contrib.MuonDimensionNumbers() if hidden else None

    return jax.tree_util.tree_map_with_path(dims, params)


def update_rule(spec: OptimizerSpec) -> optax.GradientTransformation:
    """The ``train.optimizer`` update with its schedule (no clipping, EMA or accumulation)."""
    schedule = learning_rate_schedule(spec)
    if spec.optimizer == "adamw":
        return optax.adamw(
            schedule, b1=spec.beta1, b2=spec.beta2, weight_decay=spec.weight_decay, mask=decay_mask
        )
    if spec.optimizer == "lion":
        return optax.lion(
            schedule, b1=spec.lion.b1, b2=spec.lion.b2, weight_decay=spec.weight_decay, mask=decay_mask
        )
    if spec.optimizer == "adafactor":
        a = spec.adafactor
        return optax.adafactor(
            schedule,
            min_dim_size_to_factor=a.min_dim_size_to_factor,
            decay_rate=a.decay_rate,
            multiply_by_parameter_scale=a.multiply_by_parameter_scale,
            clipping_threshold=a.clipping_threshold or None,
            momentum=a.momentum or None,
            weight_decay_rate=a.weight_decay_rate or None,
            weight_decay_mask=decay_mask,
        )
    if spec.optimizer == "muon":
        m = spec.muon
        return contrib.muon(
            learning_rate_schedule(spec, peak=m.learning_rate),
            ns_steps=m.ns_steps,
            beta=m.beta,
            weight_decay=spec.weight_decay,
            nesterov=m.nesterov,
            adam_b1=spec.beta1,
            adam_b2=spec.beta2,
            adam_learning_rate=schedule,
            muon_weight_dimension_numbers=muon_dimension_numbers,
        )
    raise ValueError(f"unknown optimizer {spec.optimizer!r} (one of {', '.join(OPTIMIZERS)})")


class ParamsEmaState(NamedTuple):
    """The wrapped optimizer's state and the exponential moving average of the parameters (float32)."""

    inner: Any
    ema: Any


def with_params_ema(inner: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
    """``inner``, also keeping ``ema = decay * ema + (1 - decay) * new_params`` after every update it makes
    (starting from the initial parameters). The average lives in the optimizer state, so it is checkpointed,
    sharded and restored with it; under MultiSteps it advances once per optimizer step."""

    def init_fn(params):
        return ParamsEmaState(inner.init(params), jax.tree.map(lambda p: p.astype(jnp.float32), params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("with_params_ema needs the parameters")
        updates, inner_state = inner.update(updates, state.inner, params)
        new_params = optax.apply_updates(params, updates)
        ema = jax.tree.map(
            lambda e, p: decay * e + (1.0 - decay) * p.astype(jnp.float32), state.ema, new_params
        )
        return updates, ParamsEmaState(inner_state, ema)

    return optax.GradientTransformation(init_fn, update_fn)


def ema_params(opt_state, params):
    """The EMA of the parameters held in ``opt_state`` (see :func:`with_params_ema`), in ``params``' dtypes;
    raises ValueError when the optimizer keeps none."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ParamsEmaState))
        if isinstance(s, ParamsEmaState)
    ]
    if not found:
        raise ValueError("the optimizer state holds no EMA of the parameters (train.ema_decay is 0)")
    return jax.tree.map(lambda e, p: e.astype(p.dtype), found[0].ema, params)


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
    """Clipping and the update rule (with its schedule), with the parameters' EMA when ``ema_decay > 0``,
    wrapped in MultiSteps when accumulating gradients with ``accum_impl='multisteps'`` (under ``'scan'`` the
    train step itself averages the micro-batches)."""
    parts = []
    if spec.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(spec.grad_clip))
    parts.append(update_rule(spec))
    tx = optax.chain(*parts)
    if spec.ema_decay > 0:
        tx = with_params_ema(tx, spec.ema_decay)
    if spec.uses_multisteps:
        tx = optax.MultiSteps(tx, every_k_schedule=spec.grad_accum_steps).gradient_transformation()
    return tx
