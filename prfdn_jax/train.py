"""Training: L1 on random crops, Adam, data parallel over every device, resumable workdirs.

A config is a Python module with ``get_config()`` returning a :class:`TrainConfig` (or a dict of its
fields); ``path.py:fn`` picks another function (e.g. ``experiments/prfdn_x2.py:tiny``). A pipeline
config (:class:`prfdn_jax.pipeline.PipelineConfig`) holds one TrainConfig per training stage.

The network is trained in the form it is given: a branch net through its ``vmap`` path, a wide net
as grouped convs, a merged/pruned net as dense convs (``config.impl`` overrides the apply path).
Pixels stay in [0, 255]; the loss is ``mean|SR - HR| / loss_norm`` (255: the scale Adam is used to).

Workdir layout::

    arch.json  config.json            the network trained and the config used
    checkpoints/<step>/{model,opt,data}  orbax: parameters, optimizer state, data iterator state
    metrics.csv  metrics.png  tb/     loss / lr / validation PSNR-Y (CSV, plot, TensorBoard)

Running again with the same workdir resumes from the latest checkpoint; the result is bit-identical
to an uninterrupted run (same devices). A non-finite loss or gradient stops the run
(:class:`TrainingDiverged`); checkpoints are only written after the steps before them were checked.

CLI: ``python -m prfdn_jax.train CONFIG --workdir W [--data DIR ...] [--steps N] [--val DIR ...]``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from prfdn_jax import data as data_lib
from prfdn_jax import imaging
from prfdn_jax.checkpoint import WeightsError, flat_params, load_any, set_flat_params
from prfdn_jax.networks import Arch, build_abstract, default_arch

SCHEDULES = ("constant", "cosine", "multistep")


class ConfigError(ValueError):
    """A bad config, option or workdir; the message is one line."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/Inf; the message names the step and the last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run (one stage of the recipe). Steps are optimizer steps of one global batch."""

    # network: used when no model is passed and there is no checkpoint yet
    layout: str = "rfdn"
    nf: int = 50
    n_blocks: int = 4
    scale: int = 2
    form: str = "branch"
    init_weights: str | None = None  # .pth / .safetensors / workdir to start from
    init_strict: bool = True         # False: copy the tensors whose name and shape match, rest random
    impl: str | None = None          # apply path (None: the network's default)
    # data
    data_dirs: tuple[str, ...] = ()
    patch: int = 128                 # HR patch side; LR patch = patch // scale
    batch: int = 16                  # global batch (divisible by the device count)
    degradation: str = "matlab"      # 'matlab' | 'ntire'
    augment: bool = True
    workers: int = 0                 # grain worker processes (0: in the training process)
    seed: int = 0
    # optimisation
    steps: int = 1000
    lr: float = 5e-4
    schedule: str = "constant"       # 'constant' | 'cosine' | 'multistep'
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of `steps`
    gamma: float = 0.5               # multistep factor
    warmup: int = 0                  # linear warm-up steps
    b1: float = 0.9
    b2: float = 0.999
    clip_norm: float = 0.0           # global-norm gradient clipping (0: off)
    loss_norm: float = 255.0
    # bookkeeping
    log_every: int = 50
    ckpt_every: int = 1000
    keep: int = 3                    # checkpoints kept
    val_dirs: tuple = ()             # HR folders, or (HR folder, LR folder) pairs
    val_every: int = 1000
    val_limit: int = 0               # first N validation images per folder (0: all)
    distributed: bool = False        # jax.distributed.initialize() (also when PRFDN_DISTRIBUTED=1)

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- configs
def _from_dict(d: dict):
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(d) <= names:
        return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    from prfdn_jax.pipeline import PipelineConfig

    return PipelineConfig.from_dict(d)


def load_config(path_or_module) -> Any:
    """The config of a module, module name or ``.py`` file (``:fn`` picks a function, default ``get_config``).

    Returns a :class:`TrainConfig`, a pipeline config, or converts the dict ``get_config`` returned.
    """
    if dataclasses.is_dataclass(path_or_module) and not isinstance(path_or_module, type):
        return path_or_module
    if isinstance(path_or_module, dict):
        return _from_dict(path_or_module)
    fn_name = "get_config"
    if isinstance(path_or_module, (str, os.PathLike)):
        spec = str(path_or_module)
        if ":" in spec and not os.path.exists(spec):
            spec, fn_name = spec.rsplit(":", 1)
        if spec.endswith(".py") or os.path.sep in spec or os.path.exists(spec):
            p = Path(spec)
            if not p.is_file():
                raise ConfigError(f"{p}: no such config file")
            modspec = importlib.util.spec_from_file_location(f"_prfdn_config_{p.stem}", p)
            module = importlib.util.module_from_spec(modspec)
            try:
                modspec.loader.exec_module(module)
            except Exception as e:
                raise ConfigError(f"{p}: config failed to load ({type(e).__name__}: {e})") from None
        else:
            try:
                module = importlib.import_module(spec)
            except ImportError as e:
                raise ConfigError(f"{spec}: cannot import config module ({e})") from None
    else:
        module = path_or_module
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{getattr(module, '__name__', module)}: no function {fn_name}()")
    try:
        cfg = fn()
    except Exception as e:
        raise ConfigError(f"{fn_name}() of {getattr(module, '__name__', module)} failed "
                          f"({type(e).__name__}: {e})") from None
    return _from_dict(cfg) if isinstance(cfg, dict) else cfg


def override(config, assignments: Sequence[str]):
    """``['lr=1e-4', 'patch=64']`` applied to a dataclass config (values parsed as Python literals)."""
    import ast

    kw = {}
    names = {f.name for f in dataclasses.fields(config)}
    for a in assignments:
        key, sep, val = a.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"bad --set {a!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(names))}")
        try:
            kw[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            kw[key] = val
        if isinstance(kw[key], list):
            kw[key] = tuple(kw[key])
    return dataclasses.replace(config, **kw)


def check_config(c: TrainConfig) -> None:
    if c.steps < 0:
        raise ConfigError(f"steps must be >= 0, got {c.steps}")
    if c.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {c.schedule!r}; expected one of {SCHEDULES}")
    if not (math.isfinite(c.lr) and c.lr >= 0):
        raise ConfigError(f"bad learning rate {c.lr}")
    for k in ("log_every", "ckpt_every", "val_every", "keep"):
        if getattr(c, k) < 1:
            raise ConfigError(f"{k} must be >= 1, got {getattr(c, k)}")
    try:
        data_lib.check_settings(c.scale, c.patch, c.batch, c.degradation)
    except data_lib.DataError as e:
        raise ConfigError(str(e)) from None


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


_JIT_CACHE: dict = {}  # one compile per (network, optimizer, mesh) and process, across runs


def _opt_key(c: TrainConfig) -> tuple:
    horizon = max(c.steps, 1) if c.schedule != "constant" else None  # a constant lr ignores the length
    return (c.lr, c.schedule, c.milestones, c.gamma, c.warmup, c.b1, c.b2, c.clip_norm, horizon)


def cached_train_step(config: TrainConfig, graphdef, rest, repl, batch_sharding):
    """:func:`make_train_step` for ``config``, memoised (re-running a config does not recompile)."""
    key = ("step", graphdef, jax.tree.structure(rest), config.impl, config.loss_norm, _opt_key(config),
           repl, batch_sharding)
    if key not in _JIT_CACHE:
        tx, _ = make_optimizer(config)
        _JIT_CACHE[key] = make_train_step(graphdef, rest, tx, config.impl, config.loss_norm, repl, batch_sharding)
    return _JIT_CACHE[key]


def make_train_step(graphdef, rest, tx, impl: str | None, loss_norm: float, repl, batch_sharding):
    """``step(params, opt_state, lr, hr) -> (params, opt_state, loss, ok)``; lr/hr uint8 ``(B, h, w, 3)``."""

    def loss_fn(params, x, y):
        out = nnx.merge(graphdef, params, rest)(x, impl)
        return jnp.mean(jnp.abs(out - y)) / loss_norm

    def step(params, opt_state, lr, hr):
        loss, grads = jax.value_and_grad(loss_fn)(params, lr.astype(jnp.float32), hr.astype(jnp.float32))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        return params, opt_state, loss, ok

    return jax.jit(step, in_shardings=(repl, repl, batch_sharding, batch_sharding),
                   out_shardings=(repl, repl, repl, repl))


# ----------------------------------------------------------------------------- validation
def load_val_set(entries, scale: int, limit: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(name, lr, hr)]`` uint8; LR from the given LR folder (``<stem>x<s>.png`` or ``<stem>.png``)
    or MATLAB bicubic of the HR."""
    out = []
    for e in entries:
        hr_dir, lr_dir = (e, None) if isinstance(e, (str, os.PathLike)) else (e[0], e[1])
        try:
            files = imaging.list_images(hr_dir)
        except imaging.ImageError as err:
            raise ConfigError(f"validation: {err}") from None
        for p in files[: limit or None]:
            hr = imaging.modcrop(imaging.read_image(p).rgb, scale)
            lr = None
            if lr_dir is not None:
                for cand in (Path(lr_dir) / f"{p.stem}x{scale}{p.suffix}", Path(lr_dir) / p.name):
                    if cand.is_file():
                        lr = imaging.read_image(cand).rgb
                        break
                if lr is None:
                    raise ConfigError(f"validation: no LR image for {p.name} in {lr_dir}")
            else:
                lr = imaging.downscale(hr, scale, "matlab")
            out.append((f"{Path(hr_dir).name}/{p.stem}", lr, hr))
    return out


def cached_forward(graphdef, rest, impl: str | None = None):
    """Jitted ``fwd(params, x)``: ``(B, H, W, 3)`` float -> SR, memoised per network structure."""
    key = ("fwd", graphdef, jax.tree.structure(rest), impl)
    if key not in _JIT_CACHE:
        _JIT_CACHE[key] = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest)(x, impl))
    return _JIT_CACHE[key]


def device_forward(graphdef, rest, params, impl: str | None = None, device=None):
    """``f(x)``: ``(B, H, W, 3)`` float -> SR on one ``device`` (default: the first local one).

    Parameters and input are committed to that device, so every caller with the same network and
    input shape shares one compiled executable (training validation, pipeline PSNR and latency).
    """
    device = device or jax.local_devices()[0]
    fwd = cached_forward(graphdef, rest, impl)
    p = jax.device_put(_host_tree(params), device)

    def f(x):
        x = x if isinstance(x, jax.Array) and x.dtype == jnp.float32 else np.asarray(x, np.float32)
        return fwd(p, jax.device_put(x, device))

    return f


def _host_tree(tree):
    return jax.tree.map(_host, tree)


def make_evaluator(graphdef, rest, impl):
    """``evaluate(params, val_set, scale) -> mean PSNR-Y`` (crop = scale) on the first local device."""
    from prfdn_jax.inference import upscale_array
    from prfdn_jax.metrics import psnr

    def evaluate(params, val_set, scale):
        f = device_forward(graphdef, rest, params, impl)
        vals = []
        for _, lr, hr in val_set:
            sr = upscale_array(f, lr, scale)
            vals.append(psnr(sr, hr[: sr.shape[0], : sr.shape[1]], crop=scale, y_channel=True))
        return float(np.mean(vals))

    return evaluate


# ----------------------------------------------------------------------------- logging
CSV_FIELDS = ("step", "loss", "lr", "psnr_y", "steps_per_s", "elapsed_s")


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without importing torch when torch is not loaded yet.

    tensorboardX imports torch only to recognise torch tensors; scalars never need it, and torch
    costs seconds to import.
    """
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` inside tensorboardX raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """metrics.csv (kept up to the resume step), TensorBoard events in tb/, metrics.png at close."""

    def __init__(self, workdir: Path, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = workdir / "metrics.csv"
        self.plot_path = workdir / "metrics.png"
        self.rows: list[dict] = []
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= start_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(self.rows)
        try:
            SummaryWriter = _summary_writer_class()
            self.tb = SummaryWriter(str(workdir / "tb"), purge_step=start_step or None, flush_secs=30)
        except ImportError:
            warnings.warn("tensorboardX is not installed: no TensorBoard events", stacklevel=2)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: ("" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k])
               for k in CSV_FIELDS}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS).writerow(row)
        if self.tb is not None:
            step = int(row["step"])
            for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("steps_per_s", "train/steps_per_s"),
                             ("psnr_y", "val/psnr_y")):
                if row[key] != "":
                    self.tb.add_scalar(tag, float(row[key]), step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.close()
        plot_metrics(self.rows, self.plot_path)


def plot_metrics(rows: list[dict], path: Path) -> None:
    """Loss (log scale) and validation PSNR-Y against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
        return ([p[0] for p in pts], [p[1] for p in pts])

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    x, y = series("loss")
    a.plot(x, y, lw=1)
    a.set(xlabel="step", ylabel="L1 loss / 255", title="training loss")
    if y and min(y) > 0:
        a.set_yscale("log")
    x, y = series("psnr_y")
    b.plot(x, y, "o-", ms=3)
    if not x:
        b.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=b.transAxes)
    b.set(xlabel="step", ylabel="dB", title="validation PSNR-Y")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- workdir
def _manager(workdir: Path, keep: int = 3):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(workdir.resolve() / "checkpoints",
                                 options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
                                 item_names=("model", "opt", "data"))


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))  # replicated: every process holds all of it
    return np.asarray(x)


def pack(tree) -> dict[str, np.ndarray]:
    """A pytree as one flat host vector per dtype (``{'float32': (n,), 'int32': (m,)}``), leaf order.

    Checkpoints hold packed trees: orbax's cost is per array, and these nets have hundreds of tiny ones.
    """
    groups: dict[str, list[np.ndarray]] = {}
    for leaf in jax.tree.leaves(tree):
        a = _host(leaf)
        groups.setdefault(a.dtype.name, []).append(a.ravel())
    return {k: np.concatenate(v) for k, v in groups.items()}


def unpack(packed: dict[str, np.ndarray], template):
    """Inverse of :func:`pack`: arrays shaped as ``template``'s leaves (arrays or ShapeDtypeStructs)."""
    leaves, treedef = jax.tree.flatten(template)
    offsets = dict.fromkeys(packed, 0)
    out = []
    for t in leaves:
        name, n = np.dtype(t.dtype).name, int(np.prod(t.shape))
        if name not in packed or offsets[name] + n > packed[name].size:
            raise WeightsError(f"checkpoint does not fit the network (too few {name} values)")
        out.append(np.asarray(packed[name][offsets[name]:offsets[name] + n]).reshape(t.shape))
        offsets[name] += n
    if any(offsets[k] != packed[k].size for k in packed):
        raise WeightsError("checkpoint does not fit the network (values left over)")
    return jax.tree.unflatten(treedef, out)


def _with_sharding(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def read_workdir_arch(path: str | os.PathLike) -> Arch:
    p = Path(path)
    f = p / "arch.json"
    if not f.is_file():
        raise WeightsError(f"{p}: not a training workdir (no arch.json)")
    try:
        return Arch.from_json(f.read_text())
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{f}: bad architecture file ({e})") from None


def load_workdir_model(path: str | os.PathLike, step: int | None = None) -> nnx.Module:
    """The network of a training workdir with the parameters of its latest (or ``step``) checkpoint."""
    import orbax.checkpoint as ocp

    p = Path(path)
    arch = read_workdir_arch(p)
    if not (p / "checkpoints").is_dir():
        raise WeightsError(f"{p}: training workdir without checkpoints")
    mngr = _manager(p)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise WeightsError("training workdir without a finished checkpoint")
        model = build_abstract(arch)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        r = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
        params = unpack(r["model"], params)
    except WeightsError as e:
        raise WeightsError(f"{p}: {e}") from None
    except Exception as e:
        raise WeightsError(f"{p}: cannot restore checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    finally:
        mngr.close()
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params), rest)


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
    """Train and return ``(trained network, summary)``.

    summary: ``workdir, start_step, step, steps, loss (mean over the last log interval), psnr_y,
    best_psnr_y, devices, processes, per_device_batch, params, wall_s, steps_per_s, arch, losses``
    (``[(step, loss)]`` of every logged interval of this run), ``batch_shards`` (the LR batch shapes
    held by this process's devices, first step).
    """
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    config = load_config(config)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train needs a TrainConfig, got {type(config).__name__} (a pipeline config? pick a stage)")
    if steps is not None:
        config = config.replace(steps=int(steps))
    if data_dirs:
        if isinstance(data_dirs, (str, os.PathLike)):
            data_dirs = [data_dirs]
        config = config.replace(data_dirs=tuple(str(d) for d in data_dirs))
    if val_dirs is not None:
        config = config.replace(val_dirs=tuple(val_dirs))
    check_config(config)
    if not config.data_dirs:
        raise ConfigError("no training data: give data folders (--data) or set data_dirs in the config")
    maybe_initialize_distributed(config)

    workdir = Path(workdir)
    devices = jax.devices()
    n_dev, n_proc, proc = len(devices), jax.process_count(), jax.process_index()
    if config.batch % n_dev:
        raise ConfigError(f"batch {config.batch} is not divisible by the {n_dev} devices")
    mesh = Mesh(np.array(devices), ("data",))
    repl, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    is_main = proc == 0

    # network: the checkpoint's, else the given one, else the config's
    workdir.mkdir(parents=True, exist_ok=True)
    mngr = _manager(workdir, config.keep)
    try:
        latest = mngr.latest_step()
        if latest is not None:
            arch = read_workdir_arch(workdir)
            if model is not None and model.arch != arch:
                raise ConfigError(f"{workdir}: holds a checkpoint of another network; use a new workdir")
            model = build_abstract(arch)
        elif model is None:
            model = init_model(config)
        arch = model.arch
        if arch.scale != config.scale:
            config = config.replace(scale=arch.scale)
            check_config(config)
        it = data_lib.make_iterator(config.data_dirs, scale=config.scale, patch=config.patch,
                                    batch=config.batch // n_proc, degradation=config.degradation,
                                    augment=config.augment, seed=config.seed, workers=config.workers,
                                    shard=(proc, n_proc))
        if is_main:
            (workdir / "arch.json").write_text(arch.to_json())
            (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=1, default=str))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx, sched = make_optimizer(config)
        try:
            if latest is not None:
                import grain

                r = mngr.restore(latest, args=ocp.args.Composite(
                    model=ocp.args.StandardRestore(), opt=ocp.args.StandardRestore(),
                    data=grain.checkpoint.CheckpointRestore(it)))
                params = jax.device_put(unpack(r["model"], params), repl)
                opt_state = jax.device_put(unpack(r["opt"], jax.eval_shape(tx.init, params)), repl)
                start = latest
            else:
                params = jax.device_put(params, repl)
                opt_state = jax.jit(tx.init, out_shardings=repl)(params)
                start = 0
            summary = _loop(config, workdir, mngr, it, graphdef, rest, params, opt_state, tx, sched, start,
                            repl, batch_sharding, is_main, verbose)
        finally:
            if hasattr(it, "close"):
                it.close()
        params = summary.pop("_params")
    finally:
        mngr.wait_until_finished()
        mngr.close()
    summary.update(devices=n_dev, processes=n_proc, per_device_batch=config.batch // n_dev,
                   arch=arch.to_json(), workdir=str(workdir))
    trained = nnx.merge(graphdef, jax.tree.map(jnp.asarray, _host_tree(params)), rest)
    summary["params"] = sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(trained, nnx.Param)))
    return trained, summary


def _loop(config, workdir, mngr, it, graphdef, rest, params, opt_state, tx, sched, start, repl, batch_sharding,
          is_main, verbose):
    import grain
    import orbax.checkpoint as ocp

    total = config.steps
    step_fn = cached_train_step(config, graphdef, rest, repl, batch_sharding)
    val_set = load_val_set(config.val_dirs, config.scale, config.val_limit) if config.val_dirs else []
    evaluate = make_evaluator(graphdef, rest, config.impl) if val_set else None
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
    step = start

    def to_global(x):
        return jax.make_array_from_process_local_data(batch_sharding, x)

    def save(s):
        mngr.save(s, args=ocp.args.Composite(model=ocp.args.StandardSave(pack(params)),
                                             opt=ocp.args.StandardSave(pack(opt_state)),
                                             data=grain.checkpoint.CheckpointSave(it)))

    batch_shards = None
    try:
        while step < total:
            batch = next(it)
            lr_batch, hr_batch = to_global(batch["lr"]), to_global(batch["hr"])
            if batch_shards is None:  # what the devices actually hold
                batch_shards = [tuple(sh.data.shape) for sh in lr_batch.addressable_shards]
            params_new, opt_new, loss, ok = step_fn(params, opt_state, lr_batch, hr_batch)
            step += 1
            pending.append((step, loss, ok))
            params, opt_state = params_new, opt_new
            do_val = evaluate is not None and (step % config.val_every == 0 or step == total)
            do_save = step % config.ckpt_every == 0 or step == total
            if not (do_val or do_save or step % config.log_every == 0):
                if pbar is not None:
                    pbar.update(1)
                continue
            # check every pending step, then log, validate, save
            vals = [(s, float(_host(l)), bool(_host(o))) for s, l, o in pending]
            pending.clear()
            bad = next(((s, l) for s, l, o in vals if not o), None)
            if bad is not None:
                where = (f"step {last_saved} in {workdir / 'checkpoints'}" if last_saved
                         else "none (no checkpoint was written)")
                raise TrainingDiverged(f"non-finite loss or gradient at step {bad[0]} (loss {bad[1]}): training "
                                       f"stopped; last good checkpoint: {where}")
            now = time.perf_counter()
            sps = (step - s_last) / max(now - t_last, 1e-9)
            t_last, s_last = now, step
            mean_loss = float(np.mean([l for _, l, _ in vals]))
            losses.append((step, mean_loss))
            row = {"step": step, "loss": mean_loss, "lr": float(sched(step - 1)), "steps_per_s": round(sps, 3),
                   "elapsed_s": round(now - t0, 3)}
            if do_val:
                row["psnr_y"] = evaluate(params, val_set, config.scale)
                psnrs.append((step, row["psnr_y"]))
            log.write(row)
            if do_save:
                save(step)
                last_saved = step
            if pbar is not None:
                pbar.set_postfix(loss=f"{mean_loss:.4g}", **({"psnr": f"{row['psnr_y']:.2f}"} if do_val else {}))
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
        "losses": losses, "batch_shards": batch_shards, "_params": params,
    }
    if verbose and is_main:
        msg = f"[train] {workdir}: steps {start}->{step} in {wall:.1f}s"
        if done:
            msg += f" ({summary['steps_per_s']} steps/s), loss {summary['loss']:.5g}"
        if psnrs:
            msg += f", PSNR-Y {summary['psnr_y']:.3f} dB (best {summary['best_psnr_y']:.3f})"
        print(msg, flush=True)
    return summary


# ----------------------------------------------------------------------------- CLI
class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line ``error: ...`` on stderr (exit 2), no usage dump."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m prfdn_jax.train", description="Train (or resume) a network from a config.")
    p.add_argument("config", help="config file or module (path.py[:function])")
    p.add_argument("--workdir", required=True, help="run folder; resumes from its latest checkpoint")
    p.add_argument("--data", nargs="+", metavar="DIR", help="HR training image folders")
    p.add_argument("--val", nargs="+", metavar="DIR", help="HR validation folders (LR: MATLAB bicubic)")
    p.add_argument("--steps", type=int, help="total steps (overrides the config)")
    p.add_argument("--stage", help="for a pipeline config: the stage to train (rfdn, branch, finetune)")
    p.add_argument("--init", metavar="PATH", help="start from these weights (.pth, .safetensors, workdir)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config fields")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)

    def body():
        config = load_config(args.config)
        if not isinstance(config, TrainConfig):
            stages = getattr(config, "train_stages", ())
            if args.stage not in stages:
                raise ConfigError(f"{args.config} is a pipeline config: pass --stage {{{','.join(stages)}}}")
            config = getattr(config, args.stage)
        if args.set:
            config = override(config, args.set)
        if args.init:
            config = config.replace(init_weights=args.init)
        train(config, args.workdir, data_dirs=args.data, steps=args.steps, val_dirs=args.val)

    return run_cli(body)


def run_cli(body: Callable[[], object]) -> int:
    """Run a command's body: user errors -> one line on stderr, exit 2; divergence -> 1; Ctrl-C -> 130."""
    try:
        body()
    except (ConfigError, data_lib.DataError, WeightsError, imaging.ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; resume with the same --workdir", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    # run the canonical module's main, so configs importing prfdn_jax.train share its classes
    from prfdn_jax import train as _train

    sys.exit(_train.main())
