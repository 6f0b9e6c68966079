"""The training commands of ``prfdn``: prune (with finetuning between steps), train, pipeline.

Every option is checked before the slow part starts (pruning, compiling a training step); the shared
helpers are in :mod:`prfdn_jax.commands`.
"""

from __future__ import annotations

from pathlib import Path

from prfdn_jax.commands import CLIError, check_model_dst, check_writable, eval_set
from prfdn_jax.extras import require_torch

DEFAULT_FINETUNE_CONFIG = "experiments.smoke_x2"


# ----------------------------------------------------------------------------- prune
def _check_training_folders(dirs: list[str], patch: int) -> None:
    """Every folder exists and holds images; at least one image is ``patch`` pixels or more (headers only)."""
    from PIL import Image

    from prfdn_jax.imaging import ImageError, list_images

    big = 0
    for d in dirs:
        try:
            files = list_images(d)
        except ImageError as e:
            raise CLIError(f"--data {e}") from None
        if not files:
            raise CLIError(f"--data {d}: folder holds no images (.png, .jpg, .jpeg, .bmp)")
        for f in files:
            try:
                with Image.open(f) as im:
                    big += min(im.size) >= patch
            except (OSError, ValueError):
                continue  # unreadable: training skips it with a warning
    if not big:
        raise CLIError(f"--data: no image of at least {patch}x{patch} pixels (the finetuning patch) in "
                       f"{', '.join(dirs)}")


def _finetune_config(args, scale: int):
    """The finetuning config: ``--config``, else the smoke config with a patch that fits ``scale``."""
    import jax

    from prfdn_jax.config import ConfigError, TrainConfig, check_config, load_config

    config = load_config(args.config or DEFAULT_FINETUNE_CONFIG)
    if not isinstance(config, TrainConfig):
        raise CLIError(f"--config {args.config}: not a training config (a pipeline config? give one stage's file)")
    n_dev = jax.device_count()
    if args.config is None:  # derived from the network: LR patches of 24 pixels, one batch per device group
        config = config.replace(scale=scale, patch=24 * scale, batch=-(-config.batch // n_dev) * n_dev)
    config = config.replace(scale=scale)
    try:
        check_config(config)
    except ConfigError as e:
        raise CLIError(f"--config {args.config}: {e} (the network is x{scale})") from None
    if config.batch % n_dev:
        raise CLIError(f"--config {args.config}: batch {config.batch} is not divisible by the {n_dev} devices")
    return config


def cmd_prune(args) -> int:
    require_torch("prfdn prune", pruning=True)
    from prfdn_jax.checkpoint import load_any, save_model
    from prfdn_jax.evaluate import evaluate
    from prfdn_jax.macs import params as params_of
    from prfdn_jax.prune import prune_model
    from prfdn_jax.train import finetune

    # every option first: the pruning (and finetuning) is slow
    if not 0 < args.ratio < 1:
        raise CLIError(f"--ratio must be between 0 and 1, got {args.ratio}")
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.finetune_steps < 0:
        raise CLIError(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    if args.uniform and args.free:
        raise CLIError("--uniform and --free exclude each other")
    if args.finetune_steps and not args.data:
        raise CLIError("--finetune-steps needs --data DIR with training images")
    if (args.data or args.config) and not args.finetune_steps:
        raise CLIError(f"{'--data' if args.data else '--config'} is for finetuning: add --finetune-steps N")
    check_model_dst(args.dst)
    if args.val and not Path(args.val).is_dir():
        raise CLIError(f"--val {args.val}: no such folder")
    model = load_any(args.src)
    if args.uniform and model.arch.form == "merged":
        raise CLIError(f"{args.src}: a merged network has no branches left to keep uniform; drop --uniform")
    scale = model.arch.scale
    finetune_fn = None
    if args.finetune_steps:
        config = _finetune_config(args, scale)
        _check_training_folders(args.data, config.patch)
        finetune_fn = lambda m, step: finetune(m, config, args.data, args.finetune_steps)  # noqa: E731
    val_fn = None
    if args.val:
        items = eval_set(Path(args.val), scale)
        val_fn = lambda m: evaluate(m, items, scale, with_ssim=False)["psnr_y"]  # noqa: E731
    # Default: a branch/wide network stays grouped (uniform); a merged one is pruned freely. Free
    # pruning of a wide network first densifies its block-diagonal convs (N times the parameters).
    uniform = args.uniform or (not args.free and model.arch.form != "merged")
    print(f"mode: {'uniform (every branch the same width; stays a wide grouped network)' if uniform else 'free (any width per layer; dense merged layout)'}")
    pruned, history = prune_model(model, ratio=args.ratio, steps=args.steps, uniform=uniform,
                                  importance=args.importance, finetune=finetune_fn, val=val_fn)
    print(f"{'step':>4} {'params':>10} {'GMAC@1080p':>11} {'PSNR-Y':>8}")
    for h in history:
        p = h.get("psnr")
        print(f"{h['step']:>4} {h['params']:>10,} {h['gmac_1080p']:>11.2f} {'-' if p is None else format(p, '.3f'):>8}")
    n0, n1 = params_of(model), history[-1]["params"]
    print(f"parameters {n0:,} -> {n1:,} ({100 * (n1 - n0) / n0:+.1f}% against {args.src})")
    if not finetune_fn:
        print("note: pruned without finetuning (no --finetune-steps/--data): quality is not recovered")
    save_model(args.dst, pruned)
    print(f"wrote {args.dst} ({pruned.arch.form})")
    return 0


# ----------------------------------------------------------------------------- train / pipeline
def _type_error(value, hint) -> str | None:
    """What ``value`` should be for the type ``hint`` (None: it is that)."""
    import types
    import typing

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


def set_overrides(config, assignments: list[str]):
    """``--set KEY=VALUE ...`` applied to ``config``, every value checked against its field's type."""
    import dataclasses
    import typing

    from prfdn_jax.config import override

    new = override(config, assignments)
    hints = typing.get_type_hints(type(config))
    fixed = {}
    for a in assignments:
        key = a.partition("=")[0]
        value, hint = getattr(new, key), hints.get(key)
        if isinstance(value, str) and (hint is tuple or typing.get_origin(hint) is tuple):
            value = fixed[key] = (value,)  # one folder: data_dirs=/x
        want = _type_error(value, hint)
        if want:
            raise CLIError(f"bad --set {a!r}: {key} must be {want}, got {value!r}")
        if hint is float and isinstance(value, int):
            fixed[key] = float(value)
    return dataclasses.replace(new, **fixed) if fixed else new


def check_run_folders(args) -> None:
    """--workdir can be a folder; every --data / --val folder exists (before the config's network is built)."""
    wd = Path(args.workdir)
    if wd.exists() and not wd.is_dir():
        raise CLIError(f"--workdir {wd}: exists and is not a folder")
    if not wd.exists():
        check_writable(wd, "workdir", folder=True)
    for opt, dirs in (("--data", args.data), ("--val", args.val)):
        for d in dirs or ():
            prepared = opt == "--data" and Path(d).suffix == ".array_record"  # prfdn prepare's output file
            if not (Path(d).is_dir() or (prepared and Path(d).is_file())):
                raise CLIError(f"{opt} {d}: no such {'file' if prepared else 'folder'}")


def cmd_train(args) -> int:
    from prfdn_jax.config import ConfigError, TrainConfig, load_config

    config = load_config(args.config)
    if not isinstance(config, TrainConfig):
        stages = getattr(config, "train_stages", ())
        if args.stage not in stages:
            raise ConfigError(f"{args.config} is a pipeline config: pass --stage {{{','.join(stages)}}}")
        config = getattr(config, args.stage)
    elif args.stage:
        raise CLIError(f"--stage is for pipeline configs; {args.config} is a training config")
    if args.set:
        config = set_overrides(config, args.set)
    if args.steps is not None and args.steps < 0:
        raise CLIError(f"--steps must be >= 0, got {args.steps}")
    if args.init:
        if not Path(args.init).exists():
            raise CLIError(f"--init {args.init}: no such file or directory")
        config = config.replace(init_weights=args.init)
    check_run_folders(args)
    return train_until_stopped(config, args)


def train_until_stopped(config, args) -> int:
    """``train`` with SIGTERM and Ctrl-C as stop requests: the run checkpoints its last completed step and
    ends with one line, exit status 128 + the signal (143 SIGTERM, 130 Ctrl-C). A second Ctrl-C: at once."""
    import sys

    from prfdn_jax.train import TrainingStopped, stop_on_signals, train

    try:
        with stop_on_signals():
            train(config, args.workdir, data_dirs=args.data, steps=args.steps, val_dirs=args.val)
    except TrainingStopped as e:
        print(f"prfdn: {e}{'; resume with the same --workdir' if e.saved is not None else ''}", file=sys.stderr,
              flush=True)
        return 128 + e.signum
    return 0


def cmd_pipeline(args) -> int:
    from prfdn_jax.config import ConfigError, PipelineConfig, load_config
    from prfdn_jax.pipeline import run_pipeline

    config = load_config(args.config)
    if not isinstance(config, PipelineConfig):
        raise ConfigError(f"{args.config}: not a pipeline config (use prfdn train for a TrainConfig)")
    if args.stages:
        config = config.replace(stages=tuple(args.stages))
    check_run_folders(args)
    run_pipeline(config, args.data, args.workdir, val_dirs=args.val)
    return 0
