"""The training step: optimizer and schedule, mixed precision, the EMA of the parameters, one jitted step.

``step(state, batch) -> (state, metrics)`` on a :class:`TrainState` (:func:`make_train_step`;
:func:`cached_train_step` memoises the last few per network, optimizer and mesh). Used by
:mod:`prfdn_jax.train` and by ``prfdn bench train`` (:func:`prfdn_jax.bench.bench_train`), so both
time the same program.

* Mixed precision (``compute_dtype``): parameters, gradients, Adam state and the EMA stay float32; the
  forward/backward runs on parameters and inputs cast to the compute dtype inside the loss, and the
  network output is cast back to float32 before the loss (so the loss and its reduction are float32).
  ``auto`` is bfloat16 on an accelerator (GPU, TPU) and float32 on CPU (XLA CPU has no fast bf16 convs).
* EMA (``ema_decay`` d > 0): after every optimizer step ``ema = d * ema + (1 - d) * params`` (BasicSR's
  ``net_g_ema`` / ``params_ema``), starting from the parameters the run starts with. It averages over
  about ``1 / (1 - d)`` steps: 0.999 suits runs of many thousand steps.
* ``metrics``: ``loss`` and ``ok`` (the loss and the gradient norm are finite; the loop stops the run
  otherwise).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from prfdn_jax.backends import choices, default_impl
from prfdn_jax.config import COMPUTE_DTYPES, TrainConfig
from prfdn_jax.metrics import Y_WEIGHTS

__all__ = ["COMPUTE_DTYPES", "TrainState", "resolve_dtype", "resolve_impl", "make_schedule", "make_optimizer",
           "make_train_step", "cached_train_step", "ema_init", "init_state"]

_JNP = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@struct.dataclass
class TrainState:
    """What one training step carries (a frozen pytree): float32 ``params`` and ``opt_state``, the EMA of
    the parameters (None without one) and ``step`` (int32 scalar: optimizer steps taken)."""

    params: Any
    opt_state: Any
    ema: Any
    step: Any


def resolve_dtype(name: str = "auto", backend: str | None = None) -> str:
    """``'float32'`` or ``'bfloat16'``: ``auto`` is the backend's (``backends.CHOICES``: bfloat16 on GPU/TPU,
    float32 on CPU)."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute_dtype {name!r}; expected one of {COMPUTE_DTYPES}")
    if name != "auto":
        return name
    return choices(backend).compute_dtype


def resolve_impl(impl: str | None, backend: str | None = None) -> str:
    """The apply path a run uses: ``impl``, else the backend's default (``$PRFDN_IMPL``, else ``backends.CHOICES``)."""
    return impl or default_impl(backend)


def make_schedule(c: TrainConfig):
    steps = max(c.steps, 1)
    if c.schedule == "constant":
        sched = optax.constant_schedule(c.lr)
    elif c.schedule == "cosine":
        sched = optax.cosine_decay_schedule(c.lr, max(steps - c.warmup, 1))
    else:
        bounds = {int(round(m * steps)) - c.warmup: c.gamma for m in c.milestones}
        sched = optax.piecewise_constant_schedule(c.lr, {k: v for k, v in bounds.items() if k > 0})
    if c.warmup:
        sched = optax.join_schedules([optax.linear_schedule(0.0, c.lr, c.warmup), sched], [c.warmup])
    return sched


def make_optimizer(c: TrainConfig):
    sched = make_schedule(c)
    tx = optax.adam(sched, b1=c.b1, b2=c.b2)
    if c.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(c.clip_norm), tx)
    return tx, sched


def ema_init(params):
    """The EMA's starting value: a copy of ``params`` (float32)."""
    return jax.tree.map(lambda p: jnp.array(p, dtype=jnp.float32, copy=True), params)


def init_state(params, tx, repl, *, ema: bool = False, opt_state=None, ema_params=None, step: int = 0) -> TrainState:
    """A :class:`TrainState` replicated on ``repl``: ``opt_state`` (default ``tx.init(params)``); the EMA
    ``ema_params`` or, when ``ema`` and none is given, a copy of ``params`` (None without ``ema``)."""
    params = jax.device_put(params, repl)
    opt_state = jax.jit(tx.init, out_shardings=repl)(params) if opt_state is None else jax.device_put(opt_state, repl)
    if not ema:
        ema_params = None
    elif ema_params is None:
        ema_params = jax.jit(ema_init, out_shardings=repl)(params)
    else:
        ema_params = jax.device_put(ema_params, repl)
    return TrainState(params, opt_state, ema_params, jax.device_put(jnp.int32(step), repl))


JIT_CACHE_SIZE = 8  # compiled steps kept per process (prune + finetune build many networks)
_JIT_CACHE: OrderedDict = OrderedDict()  # (network and apply path, optimizer, dtype, EMA, mesh) -> step, LRU


def _opt_key(c: TrainConfig) -> tuple:
    horizon = max(c.steps, 1) if c.schedule != "constant" else None  # a constant lr ignores the length
    return (c.lr, c.schedule, c.milestones, c.gamma, c.warmup, c.b1, c.b2, c.clip_norm, horizon)


def cached_train_step(config: TrainConfig, graphdef, rest, repl, batch_sharding):
    """:func:`make_train_step` for ``config``, memoised (re-running a config does not recompile; the
    :data:`JIT_CACHE_SIZE` most recently used are kept).

    The compute dtype is ``resolve_dtype(config.compute_dtype)``; the apply path is ``graphdef``'s.
    """
    dtype = resolve_dtype(config.compute_dtype)
    key = ("step", graphdef, jax.tree.structure(rest), config.loss, config.loss_norm, _opt_key(config), dtype,
           float(config.ema_decay), repl, batch_sharding)
    if key in _JIT_CACHE:
        _JIT_CACHE.move_to_end(key)
        return _JIT_CACHE[key]
    tx, _ = make_optimizer(config)
    fn = _JIT_CACHE[key] = make_train_step(graphdef, rest, tx, config.loss_norm, repl, batch_sharding,
                                           dtype=dtype, ema_decay=config.ema_decay, loss=config.loss)
    while len(_JIT_CACHE) > JIT_CACHE_SIZE:
        _JIT_CACHE.popitem(last=False)
    return fn


def make_train_step(graphdef, rest, tx, loss_norm: float, repl, batch_sharding, *, dtype: str = "float32",
                    ema_decay: float = 0.0, loss: str = "l1"):
    """``step(state, batch) -> (state, {'loss', 'ok'})``, jitted, on a :class:`TrainState`.

    batch: ``{'lr', 'hr'}`` uint8 ``(B, h, w, 3)`` sharded by ``batch_sharding``; the state replicated
    (``repl``). ``state.ema`` is None when ``ema_decay`` is 0 (and stays None). ``dtype``: the compute
    dtype (see the module doc). The apply path is the network's (``graphdef``'s): set it with
    ``with_impl`` before splitting.
    """
    cd = _JNP[resolve_dtype(dtype)]
    d = float(ema_decay)

    def loss_fn(params, x, y):
        if cd != jnp.float32:
            params = jax.tree.map(lambda p: p.astype(cd), params)
        out = nnx.merge(graphdef, params, rest)(x)
        diff = out.astype(jnp.float32) - y
        if loss == "l2":  # in (1/loss_norm) units, like the L1
            return jnp.mean(jnp.square(diff / loss_norm))
        if loss == "l1_y":  # the RGB L1 and the luma's, equally weighted (Y's offset cancels in the difference)
            dy = diff @ (jnp.asarray(Y_WEIGHTS, jnp.float32) / 255.0)
            return (jnp.mean(jnp.abs(diff)) + jnp.mean(jnp.abs(dy))) / (2.0 * loss_norm)
        return jnp.mean(jnp.abs(diff)) / loss_norm

    def step(state: TrainState, batch):
        params, ema = state.params, state.ema
        loss, grads = jax.value_and_grad(loss_fn)(params, batch["lr"].astype(cd), batch["hr"].astype(jnp.float32))
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema is not None and d > 0:
            ema = jax.tree.map(lambda e, p: e * d + p * (1.0 - d), ema, params)
        ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        return TrainState(params, opt_state, ema, state.step + 1), {"loss": loss, "ok": ok}

    return jax.jit(step, in_shardings=(repl, batch_sharding), out_shardings=(repl, repl))
