"""``prfdn prune``: a wide/merged network pruned with Torch-Pruning, optionally finetuned between steps.

Every option is checked before the slow part starts (pruning, compiling a training step).
"""

from __future__ import annotations

from pathlib import Path

from prfdn_jax.commands.common import CLIError, check_model_dst, eval_set
from prfdn_jax.config import IMPORTANCES
from prfdn_jax.extras import require_torch

HELP = "prune a wide/merged network with Torch-Pruning (needs the torch extra)"
DEFAULT_FINETUNE_CONFIG = "prfdn_jax.configs.smoke_x2"


def add_arguments(q) -> None:
    q.add_argument("src", metavar="SRC", help="network to prune (.pth, .safetensors or a training workdir)")
    q.add_argument("dst", metavar="DST", help="output model file (.safetensors)")
    q.add_argument("--ratio", type=float, required=True, help="channel pruning ratio, between 0 and 1 exclusive")
    q.add_argument("--steps", type=int, default=1, help="iterative pruning steps (default 1)")
    q.add_argument("--uniform", action="store_true",
                   help="keep every branch the same width: the result stays a wide (grouped) network "
                        "(default for a branch/wide input)")
    q.add_argument("--free", action="store_true",
                   help="any width per layer: merge into the dense layout first, then prune "
                        "(default for a merged input; merging multiplies a wide net's parameters by ~N)")
    q.add_argument("--importance", default="magnitude", choices=IMPORTANCES,
                   help="how channels are ranked for removal (Torch-Pruning importance; default magnitude; "
                        "taylor needs gradients)")
    q.add_argument("--finetune-steps", type=int, default=0, metavar="N",
                   help="training steps after each pruning step to recover quality (needs --data; default 0)")
    q.add_argument("--data", nargs="+", metavar="DIR", help="training images for finetuning")
    q.add_argument("--config", metavar="CONFIG",
                   help="training config for finetuning (file.py[:function] or a packaged config); default: the "
                        f"packaged smoke config ({DEFAULT_FINETUNE_CONFIG}) with the network's scale and a 24*scale "
                        "px patch")
    q.add_argument("--val", metavar="DIR", help="validation folder with HR/ (PSNR per step)")


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


def run(args) -> int:
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
