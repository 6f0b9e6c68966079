"""Configs: :class:`TrainConfig` (one training run), :class:`PipelineConfig` (the four-stage recipe).

A config is a Python module with ``get_config()`` returning one of them (or a dict of its fields);
``path.py:fn`` picks another function (e.g. ``experiments/prfdn_x2.py:tiny``). :func:`load_config`
takes a ``.py`` file, a packaged config (``prfdn_jax.configs.smoke_x2``, see :mod:`prfdn_jax.configs`),
a module, a dict or a config. :func:`override` applies ``--set KEY=VALUE`` checked against the field types.

Resuming a workdir with another config (:func:`config_changes`, :func:`check_resume`): the network
(:data:`NETWORK_FIELDS`) and the data-loader layout (:data:`LOADER_FIELDS`) are fixed by its
checkpoints; everything else (steps, lr, schedule, clipping, data, intervals, validation, compute dtype,
EMA decay) may change.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import pkgutil
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prfdn_jax.fileio import no_such

SCHEDULES = ("constant", "cosine", "multistep")
# pixel loss: mean |SR - HR| (RFDN, PRFDN), mean (SR - HR)^2 (a final PSNR finetune), or l1_y: the mean of
# the RGB L1 and the L1 of the BT.601 luma Y (what Y-PSNR measures)
LOSSES = ("l1", "l2", "l1_y")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")  # auto: bfloat16 on GPU/TPU, float32 on CPU
STAGES = ("rfdn", "branch", "reparam", "prune")
IMPORTANCES = ("magnitude", "l1", "l2", "taylor", "random")  # prune_importance (Torch-Pruning's rankings)
# conv families a pruning may keep at full width (prfdn prune --keep): ESA's inner convs (conv1 ... conv3_,
# conv_f: the trunk it reads and writes is still pruned) and the distilled convs (c1_d ... c4)
PRUNE_KEEP = ("esa", "distilled")
PACKAGED = "prfdn_jax.configs"  # the only module names load_config imports


class ConfigError(ValueError):
    """A bad config, option or workdir; the message is one line."""


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
    impl: str | None = None          # apply path (None: the backend's default)
    # data
    data_dirs: tuple[str, ...] = ()
    patch: int = 128                 # HR patch side; LR patch = patch // scale
    patch_sizes: tuple[int, ...] = ()  # HR sides (<= patch) each batch is cut to, drawn per batch; (): patch
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
    loss: str = "l1"                 # 'l1' | 'l2' | 'l1_y' (see LOSSES)
    loss_norm: float = 255.0
    compute_dtype: str = "auto"      # forward/backward dtype: 'auto' | 'float32' | 'bfloat16' (params stay fp32)
    ema_decay: float = 0.0           # EMA of the parameters (e.g. 0.999; 0: off): validated, saved, returned
    # bookkeeping
    log_every: int = 50
    ckpt_every: int = 1000
    keep: int = 3                    # checkpoints kept
    val_dirs: tuple = ()             # HR folders, set folders (HR/ + LR_bicubic/), or (HR, LR) folder pairs
    val_every: int = 1000
    val_limit: int = 0               # first N validation images per folder (0: all)
    distributed: bool = False        # jax.distributed.initialize() (also when PRFDN_DISTRIBUTED=1)

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The four-stage recipe (see :mod:`prfdn_jax.pipeline`). Each training stage has its own :class:`TrainConfig`."""

    scale: int
    layout: str                       # branch layout: 'b4s' (x2 in PRFDN), 'b2s' (x3), 'b2'
    rfdn: TrainConfig                 # stage 1 (layout 'rfdn', 4 blocks)
    branch: TrainConfig               # stage 2: the branch net made from stage 1
    finetune: TrainConfig             # stage 4: finetuning after each pruning step (steps per step)
    prune_ratio: float = 0.5          # fraction of channels removed per dependency group
    prune_steps: int = 4
    prune_uniform: bool = False       # True: keep the branches uniform (stays 'wide')
    prune_importance: str = "magnitude"
    stages: tuple[str, ...] = STAGES
    # report
    eval_sets: tuple[tuple[str, str], ...] = (("Set5", "data/Set5"), ("Set14", "data/Set14"))  # under shared/
    eval_limit: int = 0               # first N images per set (0: all)
    eval_crop: int = 0                # centre-crop HR to this size (smoke runs only; 0: whole images)
    latency_shape: tuple[int, int, int, int] = (1, 128, 128, 3)
    latency_runs: int = 5

    train_stages = ("rfdn", "branch", "finetune")

    def replace(self, **kw) -> "PipelineConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        kw = dict(d)
        for k in cls.train_stages:
            if isinstance(kw.get(k), dict):
                kw[k] = _train_from_dict(kw[k])
        return cls(**kw)


def _train_from_dict(d: dict) -> TrainConfig:
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _from_dict(d: dict):
    if set(d) <= {f.name for f in dataclasses.fields(TrainConfig)}:
        return _train_from_dict(d)
    return PipelineConfig.from_dict(d)


def load_config(path_or_module) -> Any:
    """The config of a ``.py`` file, a packaged config (``prfdn_jax.configs.NAME``) or a module object
    (``:fn`` picks a function, default ``get_config``).

    Returns a :class:`TrainConfig` or a :class:`PipelineConfig` (a dict ``get_config`` returned is converted).
    Other module names are refused: a config is code, run only from a file given or from this package.
    """
    if dataclasses.is_dataclass(path_or_module) and not isinstance(path_or_module, type):
        return path_or_module
    if isinstance(path_or_module, dict):
        return _from_dict(path_or_module)
    fn_name, module = "get_config", path_or_module
    if isinstance(path_or_module, (str, os.PathLike)):
        spec = str(path_or_module)
        if ":" in spec and not os.path.exists(spec):
            spec, fn_name = spec.rsplit(":", 1)
        module = _config_module(spec)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{getattr(module, '__name__', module)}: no function {fn_name}()")
    try:
        cfg = fn()
    except Exception as e:
        raise ConfigError(f"{fn_name}() of {getattr(module, '__name__', module)} failed "
                          f"({type(e).__name__}: {e})") from None
    return _from_dict(cfg) if isinstance(cfg, dict) else cfg


def packaged_configs() -> tuple[str, ...]:
    """The names ``NAME`` of the packaged configs ``prfdn_jax.configs.NAME``."""
    where = importlib.util.find_spec(PACKAGED).submodule_search_locations  # by name: configs sit above config
    return tuple(sorted(m.name for m in pkgutil.iter_modules(where)
                        if not m.name.startswith("_")))


def _config_module(spec: str):
    """The module of a config file (``.py``, a path) or of a packaged config name."""
    if spec.endswith(".py") or os.path.sep in spec or os.path.exists(spec):
        p = Path(spec)
        if not p.is_file():
            raise ConfigError(f"{p}: {no_such(p, 'config file')}")
        modspec = importlib.util.spec_from_file_location(f"_prfdn_config_{p.stem}", p)
        module = importlib.util.module_from_spec(modspec)
        try:
            modspec.loader.exec_module(module)
        except Exception as e:
            raise ConfigError(f"{p}: config failed to load ({type(e).__name__}: {e})") from None
        return module
    known, name = packaged_configs(), spec.removeprefix(f"{PACKAGED}.")
    if name == spec or name not in known:
        raise ConfigError(f"{spec}: not a config file or a packaged config ({PACKAGED}.NAME; packaged: "
                          f"{', '.join(known)})")
    try:
        return importlib.import_module(spec)
    except Exception as e:
        raise ConfigError(f"{spec}: config failed to load ({type(e).__name__}: {e})") from None


def override(config, assignments: Sequence[str]):
    """``['lr=1e-4', 'patch=64']`` (``--set``) applied to a dataclass config.

    Each value is parsed as a Python literal (else kept as a string) and checked against its field's
    type: one folder ``data_dirs=/x`` becomes a 1-tuple, an integer for a float field a float; anything
    else that does not fit is a one-line :class:`ConfigError` naming the field. Ranges are
    :func:`check_config`'s.
    """
    names = {f.name for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    kw = {}
    for a in assignments:
        key, sep, text = a.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"bad --set {a!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(names))}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = text
        hint = hints.get(key)
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, str) and (hint is tuple or typing.get_origin(hint) is tuple):
            value = (value,)  # one folder: data_dirs=/x
        want = _type_error(value, hint)
        if want:
            raise ConfigError(f"bad --set {a!r}: {key} must be {want}, got {value!r}")
        kw[key] = float(value) if hint is float and isinstance(value, int) else value
    return dataclasses.replace(config, **kw)


def _type_error(value, hint) -> str | None:
    """What ``value`` should be for the type ``hint`` (None: it is that)."""
    origin, targs = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in targs:
            return None
        errs = [_type_error(value, t) for t in targs if t is not type(None)]
        return None if None in errs else " or ".join(errs) + (" or None" if type(None) in targs else "")
    if hint is bool:
        return None if isinstance(value, bool) else "True or False"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if hint is tuple or origin is tuple:
        if not isinstance(value, tuple):
            return "a tuple"
        if targs and targs[-1] is Ellipsis:
            bad = [_type_error(v, targs[0]) for v in value]
            return next((f"a tuple of items each {b}" for b in bad if b), None)
        return None
    return None


def train_config(config, steps: int | None = None, data_dirs=None, val_dirs=None) -> TrainConfig:
    """The checked :class:`TrainConfig` of a run: ``config`` (anything :func:`load_config` takes) and overrides."""
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
    return config


def check_config(c: TrainConfig) -> None:
    """:class:`ConfigError` for settings no run can use (steps, schedule, lr, intervals, data settings)."""
    if c.steps < 0:
        raise ConfigError(f"steps must be >= 0, got {c.steps}")
    if c.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {c.schedule!r}; expected one of {SCHEDULES}")
    if c.loss not in LOSSES:
        raise ConfigError(f"unknown loss {c.loss!r}; expected one of {LOSSES}")
    if not (math.isfinite(c.lr) and c.lr >= 0):
        raise ConfigError(f"bad learning rate {c.lr}")
    if c.compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"unknown compute_dtype {c.compute_dtype!r}; expected one of {COMPUTE_DTYPES}")
    if not (0.0 <= c.ema_decay < 1.0):
        raise ConfigError(f"ema_decay must be in [0, 1) (0: no EMA), got {c.ema_decay}")
    from prfdn_jax.backends import check_impl

    try:
        check_impl(c.impl)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for k, low in (("log_every", 1), ("ckpt_every", 1), ("val_every", 1), ("keep", 1), ("seed", 0), ("workers", 0)):
        if getattr(c, k) < low:
            raise ConfigError(f"{k} must be >= {low}, got {getattr(c, k)}")
    from prfdn_jax import data as data_lib  # imports grain (~1 s): not for `prfdn --help`

    try:
        data_lib.check_settings(c.scale, c.patch, c.batch, c.degradation, c.patch_sizes)
    except data_lib.DataError as e:
        raise ConfigError(str(e)) from None


# ----------------------------------------------------------------------------- resuming with another config
NETWORK_FIELDS = ("layout", "nf", "n_blocks", "scale", "form", "init_weights", "init_strict")
# grain's saved iterator state has one layout per worker count (0 workers: {'next_index'}; mp_prefetch:
# per-worker states): restoring it with another count fails ("KeyError: 'exhausted'") or reads another
# stream. The other data settings restore: the saved position is a batch index into the new stream.
LOADER_FIELDS = ("workers",)


def config_json(config) -> dict:
    """``config`` as the JSON-compatible dict that ``config.json`` holds (tuples as lists)."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def config_changes(old: dict | None, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (old value, new value)}`` of the fields of ``new`` that differ from ``old`` (a config.json dict)."""
    if not old:
        return {}
    return {k: (old[k], v) for k, v in config_json(new).items() if k in old and old[k] != v}


def _fmt(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``steps 100 (was 40), lr 0.0001 (was 0.0005)``."""
    return ", ".join(f"{k} {_fmt(new)} (was {_fmt(old)})" for k, (old, new) in changes.items())


def check_resume(workdir, changes: dict[str, tuple[Any, Any]], *, network: bool = True) -> None:
    """:class:`ConfigError` for changes a workdir's checkpoints cannot take (``network``: check its fields)."""
    net = {k: changes[k] for k in NETWORK_FIELDS if k in changes} if network else {}
    if net:
        raise ConfigError(f"{workdir}: {describe_changes(net)}: the network cannot change in a workdir with "
                          "checkpoints (they hold the earlier network); use a new workdir")
    loader = {k: changes[k] for k in LOADER_FIELDS if k in changes}
    if loader:
        old = ", ".join(f"{k}={_fmt(o)}" for k, (o, _) in loader.items())
        raise ConfigError(f"{workdir}: {describe_changes(loader)}: cannot change when resuming (the saved "
                          f"data-loader state is per worker process); keep {old} or use a new workdir")
