"""Training: L1 on random crops, Adam, data parallel over every device, resumable workdirs.

A run is described by a :class:`prfdn_jax.config.TrainConfig` (configs: :mod:`prfdn_jax.config`);
``prfdn train CONFIG --workdir W`` is the command line.

The network is trained in the form it is given: a branch or wide net through the backend's default
wide apply path (``backends.CHOICES``), a merged/pruned net as dense convs (``config.impl`` sets
another apply path, once, with ``networks.set_impl``). Pixels stay in [0, 255]; the loss is
``mean|SR - HR| / loss_norm`` (255: the scale Adam is used to), computed in float32.
``config.compute_dtype`` (``auto``: bfloat16 on GPU/TPU, float32 on CPU) is the dtype of the
forward/backward; parameters, Adam state and the EMA stay float32 (:mod:`prfdn_jax.train_step`).
``config.ema_decay > 0`` keeps an EMA of the parameters (BasicSR's ``params_ema``): validation, the
returned network and ``load_workdir_model`` use it. The apply path and dtype a run resolved are in
``runs.jsonl`` (``resolved``).

Workdir layout (reading and writing it: :mod:`prfdn_jax.checkpoint`)::

    arch.json  config.json            the network trained and the config of the latest run
    runs.jsonl                        one line per run: time, start step, changed settings, config
    checkpoints/<step>/{model,opt,data[,ema]}  orbax: parameters, optimizer state, data iterator state, EMA
    corrupt_checkpoints/<step>        unreadable checkpoints a resume passed over
    metrics.csv  metrics.png  tb/     loss / lr / validation PSNR-Y / steps/s, images/s and the share of
                                      time spent waiting for data (CSV, plot, TensorBoard)

Running again with the same workdir resumes from the newest readable checkpoint; the result is
bit-identical to an uninterrupted run (same devices). Settings the checkpoints fix (the network, the
data-loader workers) cannot change then; the others can (noted on stderr, recorded in ``runs.jsonl``).
A non-finite loss or gradient stops the run (:class:`TrainingDiverged`); checkpoints are only written
after the steps before them were checked.
Validation (``val_dirs``): mean PSNR-Y (``scale`` border pixels cropped) by :func:`prfdn_jax.evaluate.evaluate`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax import data as data_lib
from prfdn_jax.checkpoint import (CORRUPT_DIR, EMA_ITEM, flat_params, host, host_tree, load_any, pack,
                                  read_workdir_arch, restore_newest, set_aside, set_flat_params, step_has_item, unpack,
                                  unreadable_text, workdir_manager)
from prfdn_jax.config import (ConfigError, TrainConfig, check_config, check_resume, config_changes, config_json,
                              describe_changes, train_config)
from prfdn_jax.evaluate import EvalSetError, device_forward, evaluate, load_eval_set
from prfdn_jax.networks import Arch, build_abstract, default_arch, set_impl
from prfdn_jax.runlog import MetricsLog, previous_config, record_run
from prfdn_jax.train_step import (cached_train_step, ema_init, make_optimizer, make_schedule, make_train_step,
                                  resolve_dtype, resolve_impl)

__all__ = ["TrainingDiverged", "TrainConfig", "ConfigError", "random_init", "init_model", "make_schedule",
           "make_optimizer", "cached_train_step", "make_train_step", "maybe_initialize_distributed", "train",
           "finetune", "run"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/Inf; the message names the step and the last good checkpoint."""


# ----------------------------------------------------------------------------- model and optimizer
def random_init(arch: Arch, seed: int = 0) -> nnx.Module:
    """``arch`` with PyTorch's default conv init (uniform +-1/sqrt(fan_in), kernel and bias), drawn in numpy.

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
        fan_in = shape[-4] * shape[-3] * shape[-2]
        bound = 1.0 / math.sqrt(fan_in)
        flat[key] = rng.uniform(-bound, bound, shape).astype(np.float32)
        bkey = key[: -len("kernel")] + "bias"
        flat[bkey] = rng.uniform(-bound, bound, shapes[bkey]).astype(np.float32)
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


# ----------------------------------------------------------------------------- the loop
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
    ``config.ema_decay > 0``, else the parameters.

    summary: ``workdir, start_step, step, steps, loss (mean over the last log interval), psnr_y,
    best_psnr_y, devices, processes, per_device_batch, params, wall_s, steps_per_s, images_per_s,
    data_wait`` (share of the run's wall time spent waiting for batches), ``impl, compute_dtype`` (as
    resolved for this backend), ``ema`` (whether the network returned is the EMA), ``arch, losses``
    (``[(step, loss)]`` of every logged interval of this run), ``batch_shards`` (the LR batch shapes
    held by this process's devices, first step), ``skipped_checkpoints`` (``[(step, why)]``: unreadable
    checkpoints passed over, moved to ``corrupt_checkpoints/``).

    Resuming with another config: :func:`prfdn_jax.config.check_resume` refuses what the checkpoints
    cannot take; the rest is noted on stderr and recorded in ``runs.jsonl``.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    config = train_config(config, steps, data_dirs, val_dirs)
    maybe_initialize_distributed(config)

    workdir = Path(workdir)
    devices = jax.devices()
    n_dev, n_proc, proc = len(devices), jax.process_count(), jax.process_index()
    if config.batch % n_dev:
        raise ConfigError(f"batch {config.batch} is not divisible by the {n_dev} devices")
    mesh = Mesh(np.array(devices), ("data",))
    repl, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    is_main = proc == 0
    impl, dtype, use_ema = resolve_impl(config.impl), resolve_dtype(config.compute_dtype), config.ema_decay > 0

    # network: the checkpoint's, else the given one, else the config's
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    mngr = workdir_manager(workdir, config.keep)
    try:
        have = mngr.all_steps()
        previous = previous_config(workdir)
        if have:  # resuming: the network and the data-loader layout are the checkpoints'
            arch = read_workdir_arch(workdir)
            if model is not None and model.arch != arch:
                raise ConfigError(f"{workdir}: holds a checkpoint of another network; use a new workdir")
            check_resume(workdir, config_changes(previous, config), network=model is None)
            model = build_abstract(arch)
        elif model is None:
            model = init_model(config)
        arch = model.arch
        if arch.scale != config.scale:
            config = config.replace(scale=arch.scale)
            check_config(config)
        val_set = _val_set(config)
        it = data_lib.make_iterator(config.data_dirs, scale=config.scale, patch=config.patch,
                                    batch=config.batch // n_proc, degradation=config.degradation,
                                    augment=config.augment, seed=config.seed, workers=config.workers,
                                    shard=(proc, n_proc))
        graphdef, params, rest = nnx.split(set_impl(model, impl), nnx.Param, ...)  # the path, fixed for the jit
        set_impl(model, config.impl)
        tx, sched = make_optimizer(config)
        try:
            start, state, skipped = _restore(workdir, mngr, it, params, tx, use_ema) if have else (None, None, [])
            if start is None:
                params = jax.device_put(params, repl)
                opt_state = jax.jit(tx.init, out_shardings=repl)(params)
                ema = None
                start = 0
            else:
                params, opt_state, ema = (None if x is None else jax.device_put(x, repl) for x in state)
                if config.steps < start:
                    raise ConfigError(f"{workdir}: steps {config.steps} is below its checkpoint's step {start}; "
                                      f"use steps >= {start} or a new workdir")
                if skipped:
                    mngr = _set_aside(workdir, mngr, skipped, start, config.keep, is_main)
                if use_ema and ema is None and is_main:
                    print(f"note: {workdir}: checkpoint {start} holds no EMA; the EMA starts from its parameters",
                          file=sys.stderr, flush=True)
            if use_ema and ema is None:
                ema = jax.jit(ema_init, out_shardings=repl)(params)
            changes = config_changes(previous, config)
            resolved = {"impl": impl, "compute_dtype": dtype, "backend": jax.default_backend(), "devices": n_dev}
            if is_main:
                record_run(workdir, arch_json=arch.to_json(), config=config_json(config), start_step=start,
                           changes=changes, skipped=skipped, resolved=resolved)
                if start and changes:
                    print(f"note: {workdir}: continuing with {describe_changes(changes)}", file=sys.stderr,
                          flush=True)
            summary = _loop(config, workdir, mngr, it, graphdef, rest, {"params": params, "opt": opt_state,
                            "ema": ema}, sched, start, repl, batch_sharding, is_main, verbose, val_set)
        finally:
            if hasattr(it, "close"):
                it.close()
        final = summary.pop("_state")
    finally:
        mngr.wait_until_finished()
        mngr.close()
        _tidy(workdir, created)
    summary.update(devices=n_dev, processes=n_proc, per_device_batch=config.batch // n_dev,
                   arch=arch.to_json(), workdir=str(workdir), skipped_checkpoints=skipped, impl=impl,
                   compute_dtype=dtype, ema=use_ema)
    out = final["ema"] if use_ema else final["params"]
    trained = set_impl(nnx.merge(graphdef, jax.tree.map(jnp.asarray, host_tree(out)), rest), config.impl)
    summary["params"] = sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(trained, nnx.Param)))
    return trained, summary


def _restore(workdir, mngr, it, params, tx, use_ema: bool):
    """``(step, (params, opt_state, ema), skipped)`` of the newest readable checkpoint; restores ``it`` too.

    ``ema`` is None unless ``use_ema`` and the checkpoint holds one (older checkpoints do not).
    """
    import grain
    import orbax.checkpoint as ocp

    def restore(m, step):
        with_ema = use_ema and step_has_item(m, step, EMA_ITEM)
        items = {"model": ocp.args.StandardRestore(), "opt": ocp.args.StandardRestore(),
                 "data": grain.checkpoint.CheckpointRestore(it)}
        if with_ema:
            items[EMA_ITEM] = ocp.args.StandardRestore()
        r = m.restore(step, args=ocp.args.Composite(**items))
        p = unpack(r["model"], params)
        return p, unpack(r["opt"], jax.eval_shape(tx.init, p)), unpack(r[EMA_ITEM], params) if with_ema else None

    return restore_newest(workdir, mngr, restore)


def _set_aside(workdir, mngr, skipped, start, keep, is_main):
    """Move the skipped (unreadable) checkpoints out of ``checkpoints/`` (the run writes those steps again)."""
    mngr.close()
    if is_main:
        moved = set_aside(workdir, [s for s, _ in skipped])
        where = moved[0] if len(moved) == 1 else workdir / CORRUPT_DIR
        print(f"warning: {workdir}: {unreadable_text(skipped)}, moved to {where}; resuming from step {start}",
              file=sys.stderr, flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("prfdn_set_aside")
    return workdir_manager(workdir, keep)


def _tidy(workdir: Path, created: bool) -> None:
    """After a run that saved nothing: no empty ``checkpoints/``, nor an empty workdir this run created."""
    for d in [workdir / "checkpoints"] + ([workdir] if created else []):
        with contextlib.suppress(OSError):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def _val_set(config: TrainConfig) -> list:
    """The validation images of ``config.val_dirs`` (MATLAB-bicubic LR where none is given)."""
    if not config.val_dirs:
        return []
    try:
        return load_eval_set(config.val_dirs, config.scale, limit=config.val_limit)
    except EvalSetError as e:
        raise ConfigError(f"validation: {e}") from None


def _loop(config, workdir, mngr, it, graphdef, rest, state, sched, start, repl, batch_sharding, is_main, verbose,
          val_set):
    """The steps ``start -> config.steps``; ``state``: ``{'params', 'opt', 'ema'}`` (ema None: no EMA)."""
    import grain
    import orbax.checkpoint as ocp

    total = config.steps
    step_fn = cached_train_step(config, graphdef, rest, repl, batch_sharding)
    log = MetricsLog(workdir, start, enabled=is_main)
    pbar = None
    if verbose and is_main:
        from tqdm import tqdm

        pbar = tqdm(total=total, initial=min(start, total), unit="step", dynamic_ncols=True, disable=None,
                    desc=workdir.name)
    pending: list[tuple[int, Any, Any]] = []
    losses, psnrs = [], []
    last_saved = start if start else None
    t0 = time.perf_counter()
    t_last, s_last = t0, start
    wait, wait_total = 0.0, 0.0  # seconds blocked in next(it): this log interval, the whole run
    step = start
    params, opt_state, ema = state["params"], state["opt"], state["ema"]

    def to_global(x):
        return jax.make_array_from_process_local_data(batch_sharding, x)

    def save(s):
        items = {"model": ocp.args.StandardSave(pack(params)), "opt": ocp.args.StandardSave(pack(opt_state)),
                 "data": grain.checkpoint.CheckpointSave(it)}
        if ema is not None:
            items[EMA_ITEM] = ocp.args.StandardSave(pack(ema))
        mngr.save(s, args=ocp.args.Composite(**items))

    batch_shards = None
    try:
        while step < total:
            t_wait = time.perf_counter()
            batch = next(it)
            wait += time.perf_counter() - t_wait
            lr_batch, hr_batch = to_global(batch["lr"]), to_global(batch["hr"])
            if batch_shards is None:  # what the devices actually hold
                batch_shards = [tuple(sh.data.shape) for sh in lr_batch.addressable_shards]
            params, opt_state, ema, loss, ok = step_fn(params, opt_state, ema, lr_batch, hr_batch)
            step += 1
            pending.append((step, loss, ok))
            do_val = bool(val_set) and (step % config.val_every == 0 or step == total)
            do_save = step % config.ckpt_every == 0 or step == total
            if not (do_val or do_save or step % config.log_every == 0):
                if pbar is not None:
                    pbar.update(1)
                continue
            # check every pending step, then log, validate, save
            vals = [(s, float(host(l)), bool(host(o))) for s, l, o in pending]
            pending.clear()
            bad = next(((s, l) for s, l, o in vals if not o), None)
            if bad is not None:
                where = (f"step {last_saved} in {workdir / 'checkpoints'}" if last_saved
                         else "none (no checkpoint was written)")
                raise TrainingDiverged(f"non-finite loss or gradient at step {bad[0]} (loss {bad[1]}): training "
                                       f"stopped; last good checkpoint: {where}")
            now = time.perf_counter()
            sps = (step - s_last) / max(now - t_last, 1e-9)
            share = wait / max(now - t_last, 1e-9)
            t_last, s_last, wait_total, wait = now, step, wait_total + wait, 0.0
            mean_loss = float(np.mean([l for _, l, _ in vals]))
            losses.append((step, mean_loss))
            row = {"step": step, "loss": mean_loss, "lr": float(sched(step - 1)), "steps_per_s": round(sps, 3),
                   "elapsed_s": round(now - t0, 3), "images_per_s": round(sps * config.batch, 2),
                   "data_wait": round(share, 4)}
            if do_val:
                f = device_forward(graphdef, rest, params if ema is None else ema)
                row["psnr_y"] = evaluate(f, val_set, config.scale, with_ssim=False)["psnr_y"]
                psnrs.append((step, row["psnr_y"]))
            log.write(row)
            if do_save:
                save(step)
                last_saved = step
            if pbar is not None:
                pbar.set_postfix(loss=f"{mean_loss:.4g}", **{"img/s": f"{row['images_per_s']:.4g}",
                                                              "data": f"{share:.0%}"},
                                 **({"psnr": f"{row['psnr_y']:.2f}"} if do_val else {}))
                pbar.update(1)
    finally:
        if pbar is not None:
            pbar.close()
        log.close()
    wall = time.perf_counter() - t0
    done = step - start
    summary = {
        "start_step": start, "step": step, "steps": total,
        "loss": losses[-1][1] if losses else None,
        "psnr_y": psnrs[-1][1] if psnrs else None,
        "best_psnr_y": max(p for _, p in psnrs) if psnrs else None,
        "wall_s": round(wall, 3), "steps_per_s": round(done / wall, 3) if done and wall > 0 else None,
        "images_per_s": round(done * config.batch / wall, 2) if done and wall > 0 else None,
        "data_wait": round((wait_total + wait) / wall, 4) if done and wall > 0 else None,
        "losses": losses, "batch_shards": batch_shards,
        "_state": {"params": params, "opt": opt_state, "ema": ema},
    }
    if verbose and is_main:
        msg = f"[train] {workdir}: steps {start}->{step} in {wall:.1f}s"
        if done:
            msg += (f" ({summary['steps_per_s']} steps/s, {summary['images_per_s']} img/s, "
                    f"{summary['data_wait']:.0%} waiting for data), loss {summary['loss']:.5g}")
        if psnrs:
            msg += f", PSNR-Y {summary['psnr_y']:.3f} dB (best {summary['best_psnr_y']:.3f})"
        print(msg, flush=True)
    return summary
