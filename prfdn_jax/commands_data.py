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
    rows = [bench_data(src, scale=args.scale, patch=args.patch or 128, batch=args.batch if args.batch > 1 else 16,
                       seconds=args.seconds, workers=args.workers) for src in args.data]
    print(format_bench(rows))
    if args.json:
        print(json.dumps(rows, default=str))
    return 0
