"""Device placement and compilation of the steps: ``jax.jit`` over a mesh (default) or ``jax.pmap``.

Both runners expose the same methods, so the training loop never asks which mode it is in:
``init_state``, ``put_batch``, ``train_step``, ``eval_step``, ``state_for_save``, ``abstract_state``,
``put_state``.
With ``scan_steps = K > 1`` (``train.accum_impl='scan'``) the train step takes K stacked micro-batches
(``put_batch`` of a ``[K, B, L]`` array) and makes one optimizer step of them.
``params(state)`` is what evaluation uses: the trained tree, or with ``eval_ema`` the EMA of it that the
optimizer keeps (``train.ema_decay``, ``eval.use_ema``).
A LoRA run first hands the runner its frozen base (``frozen_target``: where to load it,
``set_frozen``: place it); every step then gets it as a separate, non-donated argument.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from codex_jax.compute import batch as batch_lib
from codex_jax.compute import optim as optim_lib
from codex_jax.compute import step as step_lib
from codex_jax.errors import UserError
from codex_jax.models import lora as lora_lib

BATCH_AXES = ("data", "fsdp", "expert")  # the batch is split over every mesh axis
EXPERT_WEIGHTS = ("gate_proj", "up_proj", "down_proj")  # models/moe.py: [E, ...] stacked expert weights


def make_mesh(data: int = -1, fsdp: int = 1, num_devices: int | None = None, expert: int = 1) -> Mesh:
    """A ``('data', 'fsdp', 'expert')`` mesh; data or fsdp may be -1 (all remaining devices). Axes are Auto.
    The ``expert`` axis shards the experts of a mixture-of-experts model (and, like the others, the batch)."""
    devices = jax.devices()[: num_devices or None]
    n = len(devices)
    if expert < 1 or n % expert:
        raise UserError(f"config key 'parallel.mesh.expert': {expert} does not divide the {n} devices")
    if data == -1:
        data = n // (fsdp * expert)
    elif fsdp == -1:
        fsdp = n // (data * expert)
    if data * fsdp * expert != n or data < 1 or fsdp < 1:
        raise UserError(
            f"config key 'parallel.mesh': data={data} x fsdp={fsdp} x expert={expert} does not cover "
            f"{n} devices"
        )
    return jax.make_mesh((data, fsdp, expert), BATCH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def check_expert_axis(model_cfg, expert_size: int) -> None:
    """UserError unless an ``expert`` axis of ``expert_size`` divides the model's experts."""
    if expert_size > 1 and (not model_cfg.num_experts or model_cfg.num_experts % expert_size):
        raise UserError(
            f"config key 'parallel.mesh.expert': {expert_size} does not divide the model's "
            f"model.num_experts={model_cfg.num_experts}"
        )


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """Shards an array along its largest axis divisible by ``fsdp_size``; small or indivisible: replicated."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def is_expert_weight(path, shape) -> bool:
    """Whether a state leaf at ``path`` (a key path) is a mixture-of-experts layer's stacked expert weight."""
    last = getattr(path[-1], "key", None) if path else None
    return last in EXPERT_WEIGHTS and len(shape) == 3


def param_spec(path, shape, fsdp_size: int, expert_size: int, min_size: int) -> P:
    """An expert weight: experts over the ``expert`` axis, its other axes as :func:`fsdp_spec`; any other
    leaf: :func:`fsdp_spec`."""
    if expert_size > 1 and is_expert_weight(path, shape):
        if shape[0] % expert_size:
            raise UserError(
                f"config key 'parallel.mesh.expert': {expert_size} does not divide the {shape[0]} experts"
            )
        rest = fsdp_spec(tuple(shape[1:]), fsdp_size, min_size)
        return P("expert", *(tuple(rest) + (None,) * (len(shape) - 1 - len(rest))))
    return fsdp_spec(shape, fsdp_size, min_size)


class JitRunner:
    """``jax.jit`` with NamedSharding: batches split over (data, fsdp), state FSDP-sharded, buffers donated.

    The state's shardings depend on its shapes, so the train step is compiled once those are known
    (``init_state`` or ``abstract_state``).
    """

    def __init__(
        self,
        model,
        tx,
        mesh: Mesh,
        fsdp_min_size: int = 1 << 16,
        skip_nonfinite: bool = False,
        scan_steps: int = 1,
        z_loss: float = 0.0,
        eval_ema: bool = False,
        objective=None,
    ):
        self.mesh, self.fsdp_min_size, self.model = mesh, fsdp_min_size, model
        check_expert_axis(model.cfg, mesh.shape.get("expert", 1))
        self.scan_steps = scan_steps  # micro-batches each train_step call takes
        self.eval_ema = eval_ema  # params(state): the EMA of the parameters the optimizer keeps
        self.frozen, self.frozen_sharding, self._state_shapes = None, None, None
        self.train_fn = functools.partial(
            _train_step_fn(scan_steps, objective),
            model=model,
            tx=tx,
            skip_nonfinite=skip_nonfinite,
            z_loss=z_loss,
            objective=objective,
        )
        self.replicated = NamedSharding(mesh, P())
        batch_axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
        self.batch_sharding = NamedSharding(mesh, P(batch_axes))
        self.stacked_batch_sharding = NamedSharding(mesh, P(None, batch_axes))  # [K, B, L]
        self.train_batch_sharding = self.stacked_batch_sharding if scan_steps > 1 else self.batch_sharding
        self.state_sharding = None
        self._train: Any = None  # the jitted step (jax.stages.Wrapped), once the state's shapes are known
        self._eval = jax.jit(
            functools.partial(step_lib.eval_step, model=model, objective=objective),
            out_shardings=self.replicated,
        )

    def shardings_for(self, shapes):
        """NamedShardings for every leaf of ``shapes`` (params, optimizer state, ...): FSDP, and expert
        weights' experts over the ``expert`` axis."""
        fsdp, expert = self.mesh.shape["fsdp"], self.mesh.shape.get("expert", 1)
        return jax.tree_util.tree_map_with_path(
            lambda path, s: NamedSharding(
                self.mesh, param_spec(path, s.shape, fsdp, expert, self.fsdp_min_size)
            ),
            shapes,
        )

    def _compile(self, state_shapes) -> None:
        self._state_shapes = state_shapes
        self.state_sharding = self.shardings_for(state_shapes)
        self._train = jax.jit(
            self.train_fn,
            in_shardings=(self.state_sharding, self.train_batch_sharding, self.frozen_sharding),
            out_shardings=(self.state_sharding, self.replicated),
            donate_argnums=0,
        )

    def frozen_target(self, shapes):
        """ShapeDtypeStructs with the FSDP shardings the frozen base (LoRA) is loaded into."""
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            shapes,
            self.shardings_for(shapes),
        )

    def set_frozen(self, frozen) -> None:
        """Places the frozen base (sharded like params) that every step gets beside the state."""
        self.frozen_sharding = self.shardings_for(frozen)
        self.frozen = jax.device_put(frozen, self.frozen_sharding)
        if self._state_shapes is not None:
            self._compile(self._state_shapes)

    def init_state(self, make_state):
        """Runs ``make_state()`` under jit so its outputs land sharded on every host."""
        self._compile(jax.eval_shape(make_state))
        return jax.jit(make_state, out_shardings=self.state_sharding)()

    def abstract_state(self, state_shapes):
        """ShapeDtypeStructs carrying the current shardings: the restore target for Orbax."""
        self._compile(state_shapes)
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            state_shapes,
            self.state_sharding,
        )

    def put_state(self, state):
        """Places a restored state (already sharded as ``abstract_state`` asked)."""
        return state

    def state_for_save(self, state):
        """The state as Orbax should save it (global arrays)."""
        return state

    def put_batch(self, local_batch: np.ndarray) -> jax.Array:
        """This process's rows (``[B, L]``, or ``[K, B, L]`` micro-batches; or a masked batch's dict of
        them) -> global arrays whose batch axis is sharded over the mesh."""
        stacked = batch_lib.token_rows(local_batch).ndim == 3
        sharding = self.stacked_batch_sharding if stacked else self.batch_sharding
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), local_batch)

    def train_step(self, state, batch):
        return self._train(state, batch, self.frozen)

    def lower_train_step(self, state, batch, frozen=None) -> jax.stages.Lowered:
        """The train step lowered for these arguments (arrays, or ShapeDtypeStructs with shardings; the
        frozen base defaults to the runner's): ``.compile()`` gives the executable ``train_step`` runs."""
        assert self._train is not None, "init_state or abstract_state first: they fix the state's shardings"
        return self._train.lower(state, batch, self.frozen if frozen is None else frozen)

    def eval_step(self, params, batch):
        return self._eval(params, batch, self.frozen)

    def params(self, state):
        """The trained tree that evaluation uses: ``state.params``, or their EMA (``eval_ema``)."""
        return _eval_params(state, self.eval_ema)

    def model_params(self, state):
        """The full model parameters: ``state.params``, or the frozen base + merged adapters."""
        return _model_params(self.state_for_save(state).params, self.frozen, self.model)


def _eval_params(state, eval_ema: bool):
    return optim_lib.ema_params(state.opt_state, state.params) if eval_ema else state.params


def _train_step_fn(scan_steps: int, objective=None):
    """The step function: K micro-batches in one scan, GRPO's updates per rollout, or one micro-step."""
    iterations = getattr(objective, "iterations", 1)
    if iterations > 1:
        return functools.partial(step_lib.train_step_repeated, iterations=iterations)
    return step_lib.train_step_scan if scan_steps > 1 else step_lib.train_step


def _model_params(params, frozen, model):
    return params if frozen is None else lora_lib.merge(frozen, params, model.cfg.lora_alpha)


class PmapRunner:
    """``jax.pmap`` over the local devices with ``lax.pmean`` of gradients; state replicated per device."""

    AXIS = "batch"

    def __init__(
        self,
        model,
        tx,
        num_devices: int | None = None,
        skip_nonfinite: bool = False,
        scan_steps: int = 1,
        z_loss: float = 0.0,
        eval_ema: bool = False,
        objective=None,
    ):
        self.devices = jax.local_devices()[: num_devices or None]
        self.model, self.frozen = model, None
        self.scan_steps = scan_steps  # micro-batches each train_step call takes
        self.eval_ema = eval_ema  # params(state): the EMA of the parameters the optimizer keeps
        self._train = jax.pmap(
            functools.partial(
                _train_step_fn(scan_steps, objective),
                model=model,
                tx=tx,
                axis_name=self.AXIS,
                skip_nonfinite=skip_nonfinite,
                z_loss=z_loss,
                objective=objective,
            ),
            axis_name=self.AXIS,
            donate_argnums=0,
            devices=self.devices,
        )
        self._eval = jax.pmap(
            functools.partial(step_lib.eval_step, model=model, axis_name=self.AXIS, objective=objective),
            axis_name=self.AXIS,
            devices=self.devices,
        )

    def init_state(self, make_state):
        return self.put_state(jax.jit(make_state)())

    def abstract_state(self, state_shapes):
        sharding = jax.sharding.SingleDeviceSharding(self.devices[0])
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), state_shapes)

    def put_state(self, state):
        n = len(self.devices)
        stacked = NamedSharding(Mesh(np.array(self.devices), (self.AXIS,)), P(self.AXIS))
        return jax.device_put(jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), state), stacked)

    def frozen_target(self, shapes):
        """The frozen base loads onto one device; :meth:`set_frozen` copies it to every device."""
        return self.abstract_state(shapes)

    def set_frozen(self, frozen) -> None:
        self.frozen = self.put_state(frozen)

    def state_for_save(self, state):
        return jax.tree.map(lambda x: x[0], state)

    def put_batch(self, local_batch: np.ndarray):
        """``[B, L]`` -> ``[devices, B / devices, L]``; ``[K, B, L]`` -> ``[devices, K, B / devices, L]``
        (every array of a masked batch's dict alike)."""
        n = len(self.devices)
        if batch_lib.token_rows(local_batch).ndim == 3:
            return jax.tree.map(
                lambda a: a.reshape(a.shape[0], n, a.shape[1] // n, *a.shape[2:]).swapaxes(0, 1), local_batch
            )
        return jax.tree.map(lambda a: a.reshape(n, a.shape[0] // n, *a.shape[1:]), local_batch)

    def train_step(self, state, batch):
        state, metrics = self._train(state, batch, self.frozen)
        return state, jax.tree.map(lambda x: x[0], metrics)

    def lower_train_step(self, state, batch, frozen=None) -> jax.stages.Lowered:
        """The pmapped train step lowered for these (replicated/sharded) arguments."""
        return self._train.lower(state, batch, self.frozen if frozen is None else frozen)

    def eval_step(self, params, batch):
        return jax.tree.map(lambda x: x[0], self._eval(params, batch, self.frozen))

    def params(self, state):
        """The trained tree that evaluation uses: ``state.params``, or their EMA (``eval_ema``)."""
        return _eval_params(state, self.eval_ema)

    def model_params(self, state):
        frozen = None if self.frozen is None else self.state_for_save(self.frozen)
        return _model_params(self.state_for_save(state).params, frozen, self.model)


def make_runner(
    model,
    tx,
    *,
    mode: str = "jit",
    mesh_shape: tuple[int, ...] = (-1, 1),
    fsdp_min_size: int = 1 << 16,
    skip_nonfinite: bool = False,
    scan_steps: int = 1,
    z_loss: float = 0.0,
    eval_ema: bool = False,
    objective=None,
):
    """The runner for ``mode`` ('jit' over a ``(data, fsdp[, expert])`` mesh of ``mesh_shape``, or 'pmap');
    ``z_loss``: the train step's z-loss coefficient; ``eval_ema``: evaluation uses the parameters' EMA;
    ``objective``: a post-training objective's settings (:mod:`codex_jax.compute.objectives`) or None."""
    common: dict[str, Any] = {"skip_nonfinite": skip_nonfinite, "scan_steps": scan_steps, "z_loss": z_loss}
    common |= {"eval_ema": eval_ema, "objective": objective}
    if mode == "pmap":
        return PmapRunner(model, tx, **common)
    return JitRunner(
        model,
        tx,
        make_mesh(mesh_shape[0], mesh_shape[1], expert=mesh_shape[2] if len(mesh_shape) > 2 else 1),
        fsdp_min_size=fsdp_min_size,
        **common,
    )
