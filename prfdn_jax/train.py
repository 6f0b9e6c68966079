"""Training: L1 on random crops, Adam, data parallel over every device, resumable workdirs.

A run is described by a :class:`prfdn_jax.config.TrainConfig` (configs: :mod:`prfdn_jax.config`);
``prfdn train CONFIG --workdir W`` is the command line.

The network is trained in the form it is given: a branch or wide net through the backend's default
wide apply path (``backends.CHOICES``), a merged/pruned net as dense convs (``config.impl`` sets
another apply path, on a view of the network: the caller's is never changed). Pixels stay in
[0, 255]; the loss is ``mean|SR - HR| / loss_norm`` (255: the scale Adam is used to; ``loss="l2"``:
``mean(((SR - HR) / loss_norm)^2)``), computed in float32. ``config.compute_dtype`` (``auto``: bfloat16
on GPU/TPU, float32 on CPU) is the dtype of the
forward/backward; parameters, Adam state and the EMA stay float32. The state a step carries is a
:class:`prfdn_jax.train_step.TrainState` (``step(state, batch) -> (state, metrics)``).
``config.ema_decay > 0`` keeps an EMA of the parameters (BasicSR's ``params_ema``): validation, the
returned network and ``load_workdir_model`` use it. The apply path and dtype a run resolved are in
``runs.jsonl`` (``resolved``).

The workdir (layout, records, checkpoints, lock: :mod:`prfdn_jax.workdir`) is held by one run at a
time. Running again with the same workdir resumes from the newest readable checkpoint; the result is
bit-identical to an uninterrupted run (same devices). Settings the checkpoints fix (the network, the
data-loader workers) cannot change then; the others can (noted on stderr, recorded in ``runs.jsonl``).
A non-finite loss or gradient stops the run (:class:`TrainingDiverged`); checkpoints are only written
after the steps before them were checked. Within :func:`stop_on_signals` (``prfdn train``), SIGTERM and
Ctrl-C stop the run between two steps, after a checkpoint of the last completed step
(:class:`TrainingStopped`). Validation (``val_dirs``): mean PSNR-Y (``scale`` border pixels cropped) by
:func:`prfdn_jax.evaluate.evaluate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax import data as data_lib
from prfdn_jax.blocks import torch_uniform
from prfdn_jax.checkpoint import flat_params, load_any, set_flat_params
from prfdn_jax.config import (ConfigError, TrainConfig, check_config, check_resume, config_changes, config_json,
                              describe_changes, train_config)
from prfdn_jax.evaluate import EvalSetError, device_forward, evaluate, load_eval_set
from prfdn_jax.networks import Arch, build_abstract, default_arch, set_impl, with_impl
from prfdn_jax.runlog import Progress
from prfdn_jax.train_step import (TrainState, cached_train_step, init_state, make_optimizer, make_schedule,
                                  make_train_step, resolve_dtype, resolve_impl)
from prfdn_jax.workdir import (CHECKPOINTS, disk_full_in_one_line, host, host_tree, previous_config,
                               read_workdir_arch, record_run, restore_checkpoint, save_checkpoint, set_aside_skipped,
                               tidy, workdir_lock, workdir_manager)

__all__ = ["TrainingDiverged", "TrainingStopped", "TrainConfig", "TrainState", "ConfigError", "random_init",
           "init_model", "make_schedule", "make_optimizer", "cached_train_step", "make_train_step",
           "maybe_initialize_distributed", "stop_on_signals", "request_stop", "train", "finetune", "run"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/Inf; the message names the step and the last good checkpoint."""


class TrainingStopped(KeyboardInterrupt):
    """A stop request (:func:`request_stop`: SIGTERM, Ctrl-C) honoured between two steps.

    ``signum``, ``step`` (the last completed step), ``saved`` (the step of the workdir's newest
    checkpoint, written for the stop where the run had taken steps since; None: none).
    """

    def __init__(self, signum: int, step: int, saved: int | None, workdir: Path):
        self.signum, self.step, self.saved = signum, step, saved
        name = signal.Signals(signum).name if signum in signal.valid_signals() else str(signum)
        what = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"stopped by {name}"
        where = "nothing saved" if saved is None else f"checkpoint {Path(workdir) / CHECKPOINTS / str(saved)}"
        super().__init__(f"{what} at step {step}; {where}")


# ----------------------------------------------------------------------------- model and optimizer
def random_init(arch: Arch, seed: int = 0) -> nnx.Module:
    """``arch`` with PyTorch's default conv init (:func:`prfdn_jax.blocks.torch_uniform`, kernel then bias
    of each conv in name order), drawn from one numpy generator seeded ``seed``.

    Equivalent in distribution to ``networks.build``; drawn on the host because compiling JAX's
    random ops for every parameter shape is slow on CPU.
    """
    abstract = build_abstract(arch)
    rng = np.random.default_rng(seed)
    shapes = {k: tuple(v.shape) for k, v in _flat_abstract(abstract).items()}
    flat = {}
    for key in sorted(shapes):
        if not key.endswith(".kernel"):
            continue
        shape = shapes[key]
        fan_in = shape[-4] * shape[-3] * shape[-2]  # k * k * cin (a branch stack leads with N)
        flat[key] = torch_uniform(rng, shape, fan_in)
        bkey = key[: -len("kernel")] + "bias"
        flat[bkey] = torch_uniform(rng, shapes[bkey], fan_in)
    return set_flat_params(abstract, flat)


def _flat_abstract(model) -> dict:
    return {".".join(str(p) for p in path): v.get_value()
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}

def init_model(config: TrainConfig) -> nnx.Module:
    """The starting network of ``config``: ``init_weights`` (strict or partial) or a random init."""
    arch = default_arch(config.layout, nf=config.nf, scale=config.scale, n_blocks=config.n_blocks,
                        form=config.form)
    if not config.init_weights:
        return random_init(arch, config.seed)
    src = load_any(config.init_weights)
    if config.init_strict:
        if src.arch.scale != config.scale:
            raise ConfigError(f"{config.init_weights}: a x{src.arch.scale} network, the config is x{config.scale} "
                              "(set init_strict=False to keep only the tensors that fit)")
        return src
    model = random_init(arch, config.seed)
    have, new = flat_params(src), flat_params(model)
    copied = [k for k in new if k in have and have[k].shape == new[k].shape]
    if not copied:
        raise ConfigError(f"{config.init_weights}: no tensor fits the config's network")
    fresh = sorted(k for k in new if k not in copied)
    if fresh:
        warnings.warn(f"{config.init_weights}: {len(copied)} tensors copied; randomly initialised: "
                      f"{', '.join(fresh)}", stacklevel=2)
    new.update({k: have[k] for k in copied})
    return set_flat_params(model, new)


def maybe_initialize_distributed(config: TrainConfig) -> None:
    """``jax.distributed.initialize()`` when ``config.distributed`` or ``PRFDN_DISTRIBUTED=1``.

    Arguments come from the cluster (SLURM, Open MPI, TPU) or from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
    """
    if not (config.distributed or os.environ.get("PRFDN_DISTRIBUTED") == "1"):
        return
    if jax.distributed.is_initialized():
        return
    kw = {}
    if "JAX_NUM_PROCESSES" in os.environ:
        kw["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in os.environ:
        kw["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kw)


# ----------------------------------------------------------------------------- stop requests
_STOP: list[int] = []  # the signal number of a pending stop request


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask the running :func:`run` to stop after its current step (checkpointing it): :class:`TrainingStopped`."""
    _STOP[:] = [signum]


def stop_requested() -> int | None:
    """The signal of a pending stop request, or None."""
    return _STOP[0] if _STOP else None


@contextlib.contextmanager
def stop_on_signals():
    """Within the block, SIGTERM and the first Ctrl-C are stop requests (:func:`request_stop`); a second
    Ctrl-C interrupts at once (KeyboardInterrupt, no checkpoint). Main thread only (elsewhere: no-op).
    A multi-process run stops cleanly only when every process gets the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        request_stop(signum)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, _handler_or_default(old[signal.SIGINT]))

    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, _handler_or_default(h))
        _STOP.clear()


def _handler_or_default(h):
    return signal.SIG_DFL if h is None else h


# ----------------------------------------------------------------------------- a run
def train(config, workdir, data_dirs=None, steps: int | None = None, model: nnx.Module | None = None, *,
          val_dirs=None, verbose: bool = True) -> dict:
    """Train (or resume) in ``workdir``; returns a summary dict (see :func:`run`)."""
    return run(config, workdir, data_dirs, steps, model, val_dirs=val_dirs, verbose=verbose)[1]


def finetune(model: nnx.Module, config, data_dirs, steps: int, workdir=None, *, verbose: bool = False) -> nnx.Module:
    """Train ``model`` (any form and widths) for ``steps`` steps; returns the trained network.

    For pruning between steps. Without ``workdir`` a temporary one is used and removed.
    """
    if workdir is not None:
        return run(config, workdir, data_dirs, steps, model, verbose=verbose)[0]
    with tempfile.TemporaryDirectory(prefix="prfdn_finetune_") as tmp:
        return run(config, tmp, data_dirs, steps, model, verbose=verbose)[0]


def run(config, workdir, data_dirs=None, steps: int | None = None, model: nnx.Module | None = None, *,
        val_dirs=None, verbose: bool = True) -> tuple[nnx.Module, dict]:
    """Train and return ``(trained network, summary)``; the network is the EMA of the parameters when
    ``config.ema_decay > 0``, else the parameters. ``model`` (the network to start from when the
    workdir has no checkpoint) is left as it is.

    summary: ``workdir, start_step, step, steps, loss (mean over the last log interval), psnr_y,
    best_psnr_y, devices, processes, per_device_batch, params, wall_s, steps_per_s, images_per_s,
    data_wait`` (share of the run's wall time spent waiting for batches), ``impl, compute_dtype`` (as
    resolved for this backend), ``ema`` (whether the network returned is the EMA), ``arch, losses``
    (``[(step, loss)]`` of every logged interval of this run), ``batch_shards`` (the LR batch shapes
    held by this process's devices, first step), ``skipped_checkpoints`` (``[(step, why)]``: unreadable
    checkpoints passed over, moved to ``corrupt_checkpoints/``).

    Resuming with another config: :func:`prfdn_jax.config.check_resume` refuses what the checkpoints
    cannot take; the rest is noted on stderr and recorded in ``runs.jsonl``. Another run holding the
    workdir: :class:`prfdn_jax.workdir.WorkdirBusy`, before anything is written.
    """
    config = train_config(config, steps, data_dirs, val_dirs)
    maybe_initialize_distributed(config)
    mesh = _make_mesh(config)
    workdir = Path(workdir)
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with workdir_lock(workdir, enabled=mesh.is_main), disk_full_in_one_line(workdir):
            return _run_locked(config, workdir, model, mesh, verbose)
    finally:
        tidy(workdir, created)


@dataclasses.dataclass(frozen=True)
class _Mesh:
    """The devices a run uses: ``repl`` (replicated) and ``batch`` (split over ``data``) shardings."""

    n_dev: int
    n_proc: int
    proc: int
    repl: Any
    batch: Any

    @property
    def is_main(self) -> bool:
        return self.proc == 0

    def to_global(self, x):
        """This process's part of a batch -> the global batch array."""
        return jax.make_array_from_process_local_data(self.batch, x)


def _make_mesh(config: TrainConfig) -> _Mesh:
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devices = jax.devices()
    if config.batch % len(devices):
        raise ConfigError(f"batch {config.batch} is not divisible by the {len(devices)} devices")
    mesh = Mesh(np.array(devices), ("data",))
    return _Mesh(len(devices), jax.process_count(), jax.process_index(), NamedSharding(mesh, P()),
                 NamedSharding(mesh, P("data")))


@dataclasses.dataclass
class _Run:
    """What the loop of one run works with (``mngr`` changes when unreadable checkpoints are set aside)."""

    config: TrainConfig
    workdir: Path
    mesh: _Mesh
    verbose: bool
    mngr: Any
    it: Any = None
    graphdef: Any = None
    rest: Any = None
    sched: Any = None
    val_set: list = dataclasses.field(default_factory=list)


def _run_locked(config: TrainConfig, workdir: Path, model, mesh: _Mesh, verbose: bool):
    """:func:`run` once the workdir is held."""
    impl, dtype, use_ema = resolve_impl(config.impl), resolve_dtype(config.compute_dtype), config.ema_decay > 0
    r = _Run(config, workdir, mesh, verbose, workdir_manager(workdir, config.keep))
    try:
        have = r.mngr.all_steps()
        previous = previous_config(workdir)
        r.config, model = _network(config, workdir, model, have, previous)
        r.val_set = _val_set(r.config)
        r.it = data_lib.make_iterator(r.config.data_dirs, scale=r.config.scale, patch=r.config.patch,
                                      batch=r.config.batch // mesh.n_proc, degradation=r.config.degradation,
                                      augment=r.config.augment, seed=r.config.seed, workers=r.config.workers,
                                      shard=(mesh.proc, mesh.n_proc), patch_sizes=r.config.patch_sizes)
        try:
            r.graphdef, params, r.rest = nnx.split(with_impl(model, impl), nnx.Param, ...)  # path fixed for the jit
            tx, r.sched = make_optimizer(r.config)
            state, start, skipped = _start_state(r, params, tx, bool(have), use_ema)
            changes = config_changes(previous, r.config)
            if mesh.is_main:
                record_run(workdir, arch_json=model.arch.to_json(), config=config_json(r.config), start_step=start,
                           changes=changes, skipped=skipped, resolved={"impl": impl, "compute_dtype": dtype,
                                                                       "backend": jax.default_backend(),
                                                                       "devices": mesh.n_dev})
                if start and changes:
                    print(f"note: {workdir}: continuing with {describe_changes(changes)}", file=sys.stderr,
                          flush=True)
            state, summary = _loop(r, state, start)
        finally:
            if hasattr(r.it, "close"):
                r.it.close()
    finally:
        r.mngr.wait_until_finished()
        r.mngr.close()
    summary.update(devices=mesh.n_dev, processes=mesh.n_proc, per_device_batch=r.config.batch // mesh.n_dev,
                   arch=model.arch.to_json(), workdir=str(workdir), skipped_checkpoints=skipped, impl=impl,
                   compute_dtype=dtype, ema=use_ema)
    out = state.ema if use_ema else state.params
    trained = set_impl(nnx.merge(r.graphdef, jax.tree.map(jnp.asarray, host_tree(out)), r.rest), r.config.impl)
    summary["params"] = sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(trained, nnx.Param)))
    return trained, summary


def _network(config: TrainConfig, workdir: Path, model, have, previous) -> tuple[TrainConfig, nnx.Module]:
    """The network to train (the checkpoints', else ``model``, else the config's) and the config with its
    scale; refuses (:class:`ConfigError`) what the checkpoints cannot take."""
    if have:  # resuming: the network and the data-loader layout are the checkpoints'
        arch = read_workdir_arch(workdir)
        if model is not None and model.arch != arch:
            raise ConfigError(f"{workdir}: holds a checkpoint of another network; use a new workdir")
        check_resume(workdir, config_changes(previous, config), network=model is None)
        model = build_abstract(arch)
    elif model is None:
        model = init_model(config)
    if model.arch.scale != config.scale:
        config = config.replace(scale=model.arch.scale)
        check_config(config)
    return config, model


def _start_state(r: _Run, params, tx, have: bool, use_ema: bool) -> tuple[TrainState, int, list]:
    """``(state, start step, skipped checkpoints)``: the newest readable checkpoint's (the data iterator
    restored too; unreadable newer ones set aside), else a fresh state of ``params``."""
    repl = r.mesh.repl
    if not have:
        return init_state(params, tx, repl, ema=use_ema), 0, []
    start, restored, skipped = restore_checkpoint(r.workdir, r.mngr, r.it, params, jax.eval_shape(tx.init, params),
                                                  use_ema)
    if start is None:
        return init_state(params, tx, repl, ema=use_ema), 0, []
    if r.config.steps < start:
        raise ConfigError(f"{r.workdir}: steps {r.config.steps} is below its checkpoint's step {start}; "
                          f"use steps >= {start} or a new workdir")
    if skipped:
        r.mngr = set_aside_skipped(r.workdir, r.mngr, skipped, start, r.config.keep, r.mesh.is_main)
    params, opt_state, ema = restored
    if use_ema and ema is None and r.mesh.is_main:
        print(f"note: {r.workdir}: checkpoint {start} holds no EMA; the EMA starts from its parameters",
              file=sys.stderr, flush=True)
    state = init_state(params, tx, repl, ema=use_ema, opt_state=opt_state, ema_params=ema, step=start)
    return state, start, skipped


def _val_set(config: TrainConfig) -> list:
    """The validation images of ``config.val_dirs`` (MATLAB-bicubic LR where none is given)."""
    if not config.val_dirs:
        return []
    try:
        return load_eval_set(config.val_dirs, config.scale, limit=config.val_limit)
    except EvalSetError as e:
        raise ConfigError(f"validation: {e}") from None


# ----------------------------------------------------------------------------- the loop
def _loop(r: _Run, state: TrainState, start: int) -> tuple[TrainState, dict]:
    """The steps ``start -> config.steps``; returns the final state and the summary of the steps."""
    c = r.config
    step_fn = cached_train_step(c, r.graphdef, r.rest, r.mesh.repl, r.mesh.batch)
    prog = Progress(r.workdir, start, c.steps, c.batch, r.sched, enabled=r.mesh.is_main, verbose=r.verbose)
    pending: list[tuple[int, dict]] = []  # (step, metrics) not checked yet
    step, last_saved = start, (start or None)
    try:
        while step < c.steps:
            if stop_requested() is not None:
                _stop(r, prog, state, step, start, pending, last_saved)
            batch = prog.next_batch(r.it)
            batch = {"lr": r.mesh.to_global(batch["lr"]), "hr": r.mesh.to_global(batch["hr"])}
            if prog.batch_shards is None:  # what the devices actually hold
                prog.batch_shards = [tuple(sh.data.shape) for sh in batch["lr"].addressable_shards]
            state, metrics = step_fn(state, batch)
            step += 1
            pending.append((step, metrics))
            do_val = bool(r.val_set) and (step % c.val_every == 0 or step == c.steps)
            do_save = step % c.ckpt_every == 0 or step == c.steps
            if do_val or do_save or step % c.log_every == 0:
                _flush(r, prog, state, step, pending, last_saved, do_val, do_save)
                last_saved = step if do_save else last_saved
            prog.tick()
    finally:
        prog.close()
    return state, prog.summary(step)


def _flush(r: _Run, prog, state: TrainState, step: int, pending: list, last_saved, do_val: bool,
           do_save: bool) -> None:
    """Check the pending steps (:class:`TrainingDiverged`), then log them, validate, save checkpoint ``step``."""
    vals = [(s, float(host(m["loss"])), bool(host(m["ok"]))) for s, m in pending]
    pending.clear()
    bad = next(((s, l) for s, l, o in vals if not o), None)
    if bad is not None:
        where = (f"step {last_saved} in {r.workdir / CHECKPOINTS}" if last_saved
                 else "none (no checkpoint was written)")
        raise TrainingDiverged(f"non-finite loss or gradient at step {bad[0]} (loss {bad[1]}): training "
                               f"stopped; last good checkpoint: {where}")
    if vals:
        row = prog.interval(step, [l for _, l, _ in vals])
        if do_val:
            f = device_forward(r.graphdef, r.rest, state.params if state.ema is None else state.ema)
            row["psnr_y"] = evaluate(f, r.val_set, r.config.scale, with_ssim=False)["psnr_y"]
        prog.write(row)
    if do_save:
        save_checkpoint(r.mngr, step, state.params, state.opt_state, state.ema, r.it)


def _stop(r: _Run, prog, state: TrainState, step: int, start: int, pending: list, last_saved) -> None:
    """Honour a stop request between two steps: checkpoint the last completed step (unless saved or none
    was taken), then raise :class:`TrainingStopped`."""
    signum = stop_requested()
    if step > start and step != last_saved:
        _flush(r, prog, state, step, pending, last_saved, do_val=False, do_save=True)
        last_saved = step
    _STOP.clear()  # the request is answered
    raise TrainingStopped(signum, step, last_saved, r.workdir)
