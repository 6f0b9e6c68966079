"""The bodies of ``prfdn prepare``, ``prfdn bench data`` and ``prfdn bench train``."""

from __future__ import annotations

import json


def cmd_prepare(args) -> int:
    from prfdn_jax.prepare import prepare

    s = prepare(args.data, args.out, scale=args.scale, sub_size=args.sub_size, step=args.step,
                degradation=args.degradation, workers=args.workers, compression=args.compression)
    print(f"prepared {s['count']} HR/LR pairs (x{args.scale}, {args.degradation}) from {s['images']} images "
          f"-> {args.out} ({s['bytes'] / 1e6:.1f} MB, {s['bytes_per_pair'] / 1e3:.0f} KB a pair, "
          f"{s['seconds']:.1f} s)" + (f"; skipped {len(s['skipped'])}" if s.get("skipped") else ""))
    return 0


def cmd_bench_data(args) -> int:
    from prfdn_jax.commands import CLIError
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


def cmd_bench_train(args) -> int:
    """``prfdn bench train``: one training step in JAX (each apply path x dtype) and in PyTorch (each mode)."""
    from prfdn_jax.bench import bench_train, print_train
    from prfdn_jax.commands import CLIError
    from prfdn_jax.extras import require_torch

    backend = args.backend or "both"
    modes = [m.strip() for m in args.torch_modes.split(",") if m.strip()] if args.torch_modes else None
    if backend in ("torch", "both"):
        require_torch("the PyTorch side of prfdn bench train (use --backend jax without it)")
        from converters.torch_bench import TRAIN_MODES

        bad = [m for m in modes or () if m not in TRAIN_MODES]
        if bad:
            raise CLIError(f"--torch-modes: unknown mode {', '.join(bad)}; modes: {', '.join(TRAIN_MODES)}")
    if args.dtype == "float16":
        raise CLIError("--dtype: training runs in float32 or bfloat16")
    scale = args.scale or 2
    patch = args.patch or 64
    if patch % scale or patch // scale < 15:
        raise CLIError(f"--patch {patch}: must be a multiple of the scale {scale} with an LR side of at least 15")
    res = bench_train(args.layout or "b4s", args.nf or 50, scale, args.batch or 16, patch,
                      dtypes=(args.dtype,) if args.dtype_given else ("float32", "bfloat16"), backend=backend,
                      warmup=args.warmup, runs=args.runs, torch_modes=modes)
    print_train(res)
    if args.json:
        keys = ("jax_ms", "torch_ms", "torch_mode", "ratio", "device", "jax_impl", "jax_dtype", "layout", "nf",
                "scale", "batch", "patch")
        print(json.dumps({k: res.get(k) for k in keys}))
    return 0
