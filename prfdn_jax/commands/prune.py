"""``prfdn prune``: a network pruned with Torch-Pruning in steps, finetuned between them, to a ratio or
to a budget (``--target-gmac`` at ``--size``, ``--target-params``), with the report of every step
(``pareto.csv`` and ``pareto.png`` next to DST: params, GMAC and deployed CPU latency at the size, Y-PSNR
per ``--val`` set).

The default importance is Taylor (first-order, on a calibration batch from ``--data`` or ``--val``): on
the released B4S x2, 10 % pruned without finetuning keeps 34.8 dB where magnitude (L2) importance falls
to 10.2 dB, L1 to 11.6 and random to 23.3 (Set5, from 38.9; experiments/README.md).

Every option is checked before the slow part starts (pruning, compiling a training step).
"""

from __future__ import annotations

from pathlib import Path

from prfdn_jax.commands.common import CLIError, check_model_dst, check_outputs, eval_set
from prfdn_jax.config import IMPORTANCES, PRUNE_KEEP
from prfdn_jax.extras import require_torch

HELP = "prune a network with Torch-Pruning, to a ratio or a GMAC/params budget (needs the torch extra)"
DEFAULT_FINETUNE_CONFIG = "prfdn_jax.configs.smoke_x2"
DEFAULT_IMPORTANCE = "taylor"
BUDGET_RATIO, BUDGET_STEPS = 0.9, 18  # with a budget: up to 90 % of the channels, 5 % per step
CALIB_LR_PATCH = 24  # LR pixels of a calibration patch


def add_arguments(q) -> None:
    q.add_argument("src", metavar="SRC", help="network to prune (.pth, .safetensors or a training workdir)")
    q.add_argument("dst", metavar="DST", help="output model file (.safetensors)")
    q.add_argument("--ratio", type=float,
                   help="channel pruning ratio, between 0 and 1 exclusive (with a budget: the most it may reach, "
                        f"default {BUDGET_RATIO})")
    q.add_argument("--steps", type=int,
                   help=f"iterative pruning steps (default 1; with a budget {BUDGET_STEPS}: "
                        f"{BUDGET_RATIO / BUDGET_STEPS:.2f} of the channels per step)")
    q.add_argument("--target-gmac", type=float, metavar="G",
                   help="stop at the first step costing at most G GMAC at --size (macs.macs, the NTIRE definition)")
    q.add_argument("--target-params", type=int, metavar="N", help="stop at the first step with at most N parameters")
    q.add_argument("--size", default="1080x1920", metavar="HxW",
                   help="input size (height x width) of the GMAC budget and the report's GMAC and CPU latency "
                        "(default 1080x1920; 540x960 for a 4K output at x4)")
    q.add_argument("--uniform", action="store_true",
                   help="keep every branch the same width: the result stays a wide (grouped) network "
                        "(default for a branch/wide input)")
    q.add_argument("--free", action="store_true",
                   help="any width per layer: merge into the dense layout first, then prune "
                        "(default for a merged input; merging multiplies a wide net's parameters by ~N)")
    q.add_argument("--importance", default=DEFAULT_IMPORTANCE, choices=IMPORTANCES,
                   help=f"how channels are ranked for removal (Torch-Pruning importance; default {DEFAULT_IMPORTANCE}, "
                        "on a batch of --data patches, else of --val images; magnitude wrecks this family)")
    q.add_argument("--keep", nargs="+", default=[], choices=PRUNE_KEEP,
                   help="conv families left at full width: esa (ESA's inner convs: cheap, most run after its "
                        "stride-2 conv and max-pool), distilled (c1_d ... c4); the trunk they read still shrinks")
    q.add_argument("--finetune-steps", type=int, default=0, metavar="N",
                   help="training steps after each pruning step to recover quality (needs --data; default 0)")
    q.add_argument("--data", nargs="+", metavar="DIR", help="training images for finetuning")
    q.add_argument("--config", metavar="CONFIG",
                   help="training config for finetuning (file.py[:function] or a packaged config); default: the "
                        f"packaged smoke config ({DEFAULT_FINETUNE_CONFIG}) with the network's scale and a 24*scale "
                        "px patch")
    q.add_argument("--val", nargs="+", metavar="DIR", help="validation folders with HR/ (Y-PSNR per step and set)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing DST (never SRC)")
    q.add_argument("--calib", type=int, default=16, metavar="N", help="Taylor importance: calibration patches "
                   "(default 16)")


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


def parse_size(text: str) -> tuple[int, int]:
    """``'540x960'`` -> ``(540, 960)`` (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CLIError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 1080x1920") from None
    if h < 1 or w < 1:
        raise CLIError(f"--size {text!r}: height and width must be >= 1")
    return h, w


def _check_args(args) -> tuple[float, int, tuple[int, int]]:
    """``(ratio, steps, size)`` after every check that needs no network."""
    budget = args.target_gmac is not None or args.target_params is not None
    if args.ratio is None and not budget:
        raise CLIError("give --ratio R, or a budget: --target-gmac G [--size HxW] and/or --target-params N")
    ratio = args.ratio if args.ratio is not None else BUDGET_RATIO
    steps = args.steps if args.steps is not None else BUDGET_STEPS if budget else 1
    if not 0 < ratio < 1:
        raise CLIError(f"--ratio must be between 0 and 1, got {ratio}")
    if steps < 1:
        raise CLIError(f"--steps must be >= 1, got {steps}")
    if args.target_gmac is not None and not args.target_gmac > 0:
        raise CLIError(f"--target-gmac must be > 0, got {args.target_gmac}")
    if args.target_params is not None and args.target_params < 1:
        raise CLIError(f"--target-params must be >= 1, got {args.target_params}")
    if args.finetune_steps < 0:
        raise CLIError(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    if args.uniform and args.free:
        raise CLIError("--uniform and --free exclude each other")
    if args.finetune_steps and not args.data:
        raise CLIError("--finetune-steps needs --data DIR with training images")
    if args.config and not args.finetune_steps:
        raise CLIError("--config is for finetuning: add --finetune-steps N")
    if args.importance == "taylor" and not (args.data or args.val):
        raise CLIError("--importance taylor (the default) ranks channels on a calibration batch: give --data DIR "
                       "(training images) or --val DIR, or choose --importance magnitude (much worse for this family)")
    if args.calib < 1:
        raise CLIError(f"--calib must be >= 1, got {args.calib}")
    for d in args.val or ():
        if not Path(d).is_dir():
            raise CLIError(f"--val {d}: no such folder")
    check_model_dst(args.dst)
    from prfdn_jax.pareto import CSV_NAME, PNG_NAME

    report = [str(Path(args.dst).parent / name) for name in (CSV_NAME, PNG_NAME)]  # rewritten by every run
    check_outputs([args.dst, *report], [args.src, args.config], args.overwrite, replaceable=report)
    return ratio, steps, parse_size(args.size)


def _calibration(args, scale: int, val_sets: dict):
    """Taylor's calibration batch ``(lr, hr)`` float32 NHWC in [0, 255]: random patches of ``--data``, else
    centre crops of the ``--val`` images (one LR size: the smallest image's, at most CALIB_LR_PATCH)."""
    import numpy as np

    if args.data:
        from prfdn_jax.data import make_iterator

        it = make_iterator(args.data, scale=scale, patch=CALIB_LR_PATCH * scale, batch=args.calib, seed=0)
        b = next(it)
        return b["lr"].astype(np.float32), b["hr"].astype(np.float32)
    items = [it for items in val_sets.values() for it in items][: args.calib]
    p = min(CALIB_LR_PATCH, *(min(lr.shape[:2]) for _, lr, _ in items))
    lrs, hrs = [], []
    for _, lr, hr in items:  # the centre p x p of each LR and the HR pixels it covers
        y, x = (lr.shape[0] - p) // 2, (lr.shape[1] - p) // 2
        lrs.append(lr[y:y + p, x:x + p])
        hrs.append(hr[y * scale:(y + p) * scale, x * scale:(x + p) * scale])
    return np.stack(lrs).astype(np.float32), np.stack(hrs).astype(np.float32)


def _row_printer(size: tuple[int, int], set_names: list[str]):
    """Print the table's header now and ``print_row(history entry)``: one line per step, as it comes."""
    head = f"{'step':>4} {'ratio':>6} {'params':>10} {'GMAC@' + 'x'.join(map(str, size)):>14} {'CPU ms':>8}"
    print(head + "".join(f" {n[:10]:>10}" for n in set_names), flush=True)

    def print_row(h: dict) -> None:
        row = f"{h['step']:>4} {h['ratio']:>6.3f} {h['params']:>10,} {h['gmac']:>14.2f} {h.get('latency_ms', 0):>8.1f}"
        print(row + "".join(f" {h.get('psnr_' + n, float('nan')):>10.3f}" for n in set_names), flush=True)

    return print_row


def run(args) -> int:
    require_torch("prfdn prune", pruning=True)
    from prfdn_jax import pareto
    from prfdn_jax.checkpoint import load_any, save_model
    from prfdn_jax.macs import params as params_of
    from prfdn_jax.prune import prune_model
    from prfdn_jax.train import finetune

    ratio, steps, size = _check_args(args)  # every option first: the pruning (and finetuning) is slow
    model = load_any(args.src)
    if args.uniform and model.arch.form == "merged":
        raise CLIError(f"{args.src}: a merged network has no branches left to keep uniform; drop --uniform")
    scale = model.arch.scale
    finetune_fn = None
    if args.finetune_steps:
        config = _finetune_config(args, scale)
        _check_training_folders(args.data, config.patch)
        finetune_fn = lambda m, step: finetune(m, config, args.data, args.finetune_steps)  # noqa: E731
    val_sets = {Path(d).resolve().name: eval_set(Path(d), scale) for d in args.val or ()}
    calib = _calibration(args, scale, val_sets) if args.importance == "taylor" else None
    # Default: a branch/wide network stays grouped (uniform); a merged one is pruned freely. Free
    # pruning of a wide network first densifies its block-diagonal convs (N times the parameters).
    uniform = args.uniform or (not args.free and model.arch.form != "merged")
    print(f"mode: {'uniform (every branch the same width; stays a wide grouped network)' if uniform else 'free (any width per layer; dense merged layout)'}"
          f", importance {args.importance}")
    print_row, rows, folder = _row_printer(size, list(val_sets)), [], Path(args.dst).resolve().parent
    title = f"prfdn prune {Path(args.src).name}"

    def report(entry: dict) -> None:  # the report is rewritten after every step: kept if a later one fails
        rows.append(entry)
        print_row(entry)
        pareto.write_report(rows, folder, size, title=title)

    pruned, history = prune_model(model, ratio=ratio, steps=steps, uniform=uniform, importance=args.importance,
                                  calib=calib, finetune=finetune_fn, target_gmac=args.target_gmac,
                                  target_params=args.target_params, size=size,
                                  measure=pareto.measurer(size, val_sets), progress=report,
                                  keep=tuple(args.keep))
    n0, n1 = params_of(model), history[-1]["params"]
    print(f"parameters {n0:,} -> {n1:,} ({100 * (n1 - n0) / n0:+.1f}% against {args.src})")
    if not finetune_fn:
        print("note: pruned without finetuning (no --finetune-steps/--data): quality is not recovered")
    save_model(args.dst, pruned)
    print(f"wrote {args.dst} ({pruned.arch.form}), {folder / pareto.CSV_NAME} and {folder / pareto.PNG_NAME}")
    return 0
