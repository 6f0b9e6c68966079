"""``prfdn bench``: benchmark tables. Without a sub-bench: inference, JAX (deployed) vs every PyTorch mode
on the same weights; ``paths``: the wide apply paths of a branch network; ``data``: training-input
throughput; ``train``: one training step, JAX (each path x dtype) vs PyTorch (each mode); ``folder``: a
folder of mixed image sizes through ``prfdn upscale`` processes, against one size (:mod:`prfdn_jax.bench_folder`)."""

from __future__ import annotations

import json

from prfdn_jax.commands.common import (CLIError, add_model_args, check_model_args, check_positive,
                                       parse_size, refuse_options, resolve_model)
from prfdn_jax.config import COMPUTE_DTYPES
from prfdn_jax.extras import require_torch
from prfdn_jax.spec import LAYOUTS

HELP = "benchmark tables: JAX vs every PyTorch mode on the same weights, or the apply paths (`prfdn bench paths`)"
BENCHES = ("paths", "data", "train", "folder")
BACKENDS = ("jax", "torch", "both")


def add_arguments(b) -> None:
    from prfdn_jax.deploy import DTYPES

    b.add_argument("what", nargs="?", choices=BENCHES,
                   help="paths: the wide apply paths of a branch network; data: training-input throughput; "
                        "train: one training step, JAX (each path x dtype) vs PyTorch (each mode); folder: "
                        "prfdn upscale on a folder of mixed sizes (first and second run) against one size")
    b.add_argument("folder", nargs="?", metavar="DIR",
                   help="folder: the images to upscale (default: 60 images of distinct sizes 100-400 px, made)")
    add_model_args(b)
    b.add_argument("--size", metavar="HxW", help="input size (default 540x960; paths: one number, default 128)")
    b.add_argument("--batch", type=int, help="images per call (default 1; train: 16; data: 16)")
    b.add_argument("--dtype", choices=tuple(DTYPES), help="compute dtype (default float32; train: fp32 and bf16)")
    b.add_argument("--backend", choices=BACKENDS, help="which side to time (torch needs the torch extra; default both)")
    b.add_argument("--torch-modes", metavar="M,M", help="PyTorch modes to run (default all: eager, channels_last, "
                                                         "cuda_graph, compile, compile_channels_last)")
    b.add_argument("--warmup", type=int, help="warm-up passes (default 50 on GPU, 2 on CPU)")
    b.add_argument("--runs", type=int, help="timed passes (default 244 on GPU, 5 on CPU)")
    b.add_argument("--baseline", action="store_true", help="also time the network as built (before deploy)")
    b.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    b.add_argument("--layout", choices=tuple(LAYOUTS), help="paths/train: layout (default b4s)")
    b.add_argument("--nf", type=int, help="paths/train: channels per branch (default 50)")
    b.add_argument("--repeats", type=int, help="paths: timed repeats (default 5)")
    b.add_argument("--data", nargs="+", metavar="SOURCE", help="data: image folders and/or prepared datasets")
    b.add_argument("--patch", type=int, help="data/train: HR patch side (default 128 / 64)")
    b.add_argument("--seconds", type=float, default=10.0, help="data: seconds to measure each source (default 10)")
    b.add_argument("--workers", type=int, default=0, help="data: grain worker processes (default 0)")
    b.add_argument("--buckets", metavar="B,B", help="folder: the --bucket modes to run (default off,auto,128)")
    b.add_argument("--images", type=int, help="folder: images in the made folder (default 60)")
    b.add_argument("--rounds", type=int, help="folder: rounds of every run, each with empty caches; medians (default 1)")


def run(args) -> int:
    args.dtype_given = args.dtype is not None
    if args.what == "data":
        return _bench_data(args)
    if args.what == "train":
        return _bench_train(args)
    if args.what == "folder":
        return _bench_folder(args)
    refuse_options(args, ("--buckets", "--images", "--rounds"), "of `prfdn bench folder` only")
    if args.folder:
        raise CLIError(f"{args.folder}: a folder is given to `prfdn bench folder DIR` only")
    args.dtype = args.dtype or "float32"
    args.batch = args.batch or 1
    return _bench_inference(args)


def _bench_inference(args) -> int:
    """``prfdn bench paths`` or the inference benchmark (JAX deployed vs every PyTorch mode)."""
    from prfdn_jax import bench

    check_positive(args, {"--batch": 1, "--runs": 1, "--warmup": 0, "--nf": 2, "--repeats": 1, "--workers": 0})
    refuse_options(args, ("--data", "--patch"), "of `prfdn bench data` only")
    if args.what == "paths":
        refuse_options(args, ("--model", "--weights", "--scale", "--backend", "--torch-modes", "--warmup", "--runs",
                              "--baseline", "--json"), "of `prfdn bench`, not of `prfdn bench paths`")
        size = parse_size(args.size or "128")[0]
        layout, nf, repeats = args.layout or "b4s", args.nf or 50, args.repeats or 5
        bench.print_paths(bench.bench_paths(layout, nf, size, args.batch, repeats), layout, nf, size, args.batch,
                          repeats)
        return 0
    refuse_options(args, ("--layout", "--nf", "--repeats"), "of `prfdn bench paths` only")
    size = parse_size(args.size or "540x960")
    check_model_args(args)
    backend = args.backend or "both"
    modes = None
    if args.torch_modes:
        if backend == "jax":
            raise CLIError("--torch-modes needs --backend torch or both")
        modes = [m.strip() for m in args.torch_modes.split(",") if m.strip()]
    if backend in ("torch", "both"):
        require_torch("the PyTorch side of prfdn bench (use --backend jax without it)")
        from converters.torch_bench import MODES

        bad = [m for m in modes or () if m not in MODES]
        if bad or (modes is not None and not modes):
            raise CLIError(f"--torch-modes {args.torch_modes!r}: unknown mode {', '.join(bad) or '(none)'}; "
                           f"modes: {', '.join(MODES)}")
    model, label = resolve_model(args)
    res = bench.bench_inference(model, size, args.batch, args.dtype, backend, args.warmup, args.runs, modes,
                                baseline=args.baseline)
    bench.print_inference(res, label)
    if args.json:
        keys = ("jax_ms", "torch_ms", "torch_mode", "ratio", "device", "size", "batch", "dtype")
        print(json.dumps({k: res.get(k) for k in keys}))
    return 0


def _bench_data(args) -> int:
    """``prfdn bench data``: training-input throughput of image folders and prepared datasets."""
    from prfdn_jax.prepare import bench_data, format_bench

    if not args.data:
        raise CLIError("prfdn bench data needs --data SOURCE [SOURCE ...] (image folders or a prepared dataset)")
    if not args.scale:
        raise CLIError("prfdn bench data needs --scale S")
    rows = [bench_data(src, scale=args.scale, patch=args.patch or 128, batch=args.batch or 16,
                       seconds=args.seconds, workers=args.workers) for src in args.data]
    print(format_bench(rows))
    if args.json:
        print(json.dumps(rows, default=str))
    return 0


def _bench_train(args) -> int:
    """``prfdn bench train``: one training step in JAX (each apply path x dtype) and in PyTorch (each mode)."""
    from prfdn_jax.bench import bench_train, print_train

    backend = args.backend or "both"
    modes = [m.strip() for m in args.torch_modes.split(",") if m.strip()] if args.torch_modes else None
    if backend in ("torch", "both"):
        require_torch("the PyTorch side of prfdn bench train (use --backend jax without it)")
        from converters.torch_bench import TRAIN_MODES

        bad = [m for m in modes or () if m not in TRAIN_MODES]
        if bad:
            raise CLIError(f"--torch-modes: unknown mode {', '.join(bad)}; modes: {', '.join(TRAIN_MODES)}")
    if args.dtype_given and args.dtype not in COMPUTE_DTYPES:
        raise CLIError(f"--dtype: training runs in {' or '.join(d for d in COMPUTE_DTYPES if d != 'auto')}")
    model = None
    if args.model or args.weights:  # a given network: its layout, widths and scale
        refuse_options(args, ("--layout", "--nf"), "of `prfdn bench train` without --model/--weights")
        check_model_args(args)
        model, _ = resolve_model(args)
    scale = model.arch.scale if model is not None else args.scale or 2
    patch = args.patch or 64
    if patch % scale or patch // scale < 15:
        raise CLIError(f"--patch {patch}: must be a multiple of the scale {scale} with an LR side of at least 15")
    res = bench_train(args.layout or "b4s", args.nf or 50, scale, args.batch or 16, patch,
                      dtypes=(args.dtype,) if args.dtype_given else ("float32", "bfloat16"), backend=backend,
                      warmup=args.warmup, runs=args.runs, torch_modes=modes, model=model)
    print_train(res)
    if args.json:
        keys = ("jax_ms", "torch_ms", "torch_mode", "ratio", "device", "jax_impl", "jax_dtype", "layout", "form",
                "nf", "params", "scale", "batch", "patch")
        print(json.dumps({k: res.get(k) for k in keys}))
    return 0


def _bench_folder(args) -> int:
    """``prfdn bench folder [DIR]``: mixed sizes through ``prfdn upscale`` processes, first and second run."""
    from pathlib import Path

    from prfdn_jax.bench_folder import BUCKETS, bench_folder, format_folder
    from prfdn_jax.commands.common import parse_bucket

    refuse_options(args, ("--size", "--batch", "--backend", "--torch-modes", "--warmup", "--runs", "--baseline",
                          "--layout", "--nf", "--repeats", "--data", "--patch"), "not of `prfdn bench folder`")
    check_positive(args, {"--images": 1, "--rounds": 1})
    check_model_args(args)
    if args.folder and not Path(args.folder).is_dir():
        raise CLIError(f"{args.folder}: no such folder")
    if args.folder and args.images:
        raise CLIError("--images: the number of images of the made folder; not with a folder DIR")
    buckets = [b.strip() for b in (args.buckets or ",".join(BUCKETS)).split(",") if b.strip()]
    for b in buckets:
        try:
            parse_bucket(b)
        except Exception:  # noqa: BLE001 - argparse's error type: one line here
            raise CLIError(f"--buckets: {b!r} is not auto, off or a number of pixels") from None
    model_args = [a for opt in ("model", "weights", "scale", "dtype") if getattr(args, opt)
                  for a in (f"--{opt}", str(getattr(args, opt)))]
    res = bench_folder(Path(args.folder) if args.folder else None, model_args, buckets,
                       count=args.images or 60, rounds=args.rounds or 1)
    print(format_folder(res))
    if args.json:
        print(json.dumps(res))
    return 0
