"""``prfdn prepare``: training images cut into HR sub-images with their exact LR (ArrayRecord)."""

from __future__ import annotations

from prfdn_jax.commands.common import SCALES, check_outputs

HELP = "cut training images into HR sub-images with their exact LR (ArrayRecord), for fast training input"


def add_arguments(pr) -> None:
    from prfdn_jax.resize import DEGRADATIONS
    from prfdn_jax.prepare import COMPRESSIONS

    pr.add_argument("data", nargs="+", metavar="DIR", help="folders of HR training images")
    pr.add_argument("--out", required=True, metavar="PATH",
                    help="a .array_record file (sidecar .json beside it) or a folder; give it to train --data")
    pr.add_argument("--scale", type=int, required=True, choices=SCALES, help="upscaling factor of the LR")
    pr.add_argument("--sub-size", type=int, default=480, help="HR sub-image side (default 480)")
    pr.add_argument("--step", type=int, default=240, help="stride between sub-images (default 240)")
    pr.add_argument("--degradation", choices=DEGRADATIONS, default="matlab",
                    help="how LR is made: MATLAB bicubic (default) or NTIRE (PIL bicubic + JPEG 90)")
    pr.add_argument("--rescale", type=float, nargs="+", default=[1.0], metavar="F",
                    help="also use the images downscaled by these factors in (0, 1] (MATLAB bicubic), e.g. "
                         "1 0.9 0.8: scale augmentation for small sets (default 1: as they are)")
    pr.add_argument("--workers", type=int, default=0, help="worker processes (default 0)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset at --out")
    pr.add_argument("--compression", choices=tuple(COMPRESSIONS), default="none",
                    help="record compression (zstd: 15%% smaller, 2x slower to read; default none)")


def run(args) -> int:
    from prfdn_jax.data import prepared_paths
    from prfdn_jax.prepare import prepare

    check_outputs([str(p) for p in prepared_paths(args.out)], args.data, args.overwrite)
    s = prepare(args.data, args.out, scale=args.scale, sub_size=args.sub_size, step=args.step,
                degradation=args.degradation, workers=args.workers, compression=args.compression,
                rescale=args.rescale)
    sizes = "" if args.rescale == [1.0] else f" at sizes x{', x'.join(f'{f:g}' for f in args.rescale)}"
    print(f"prepared {s['count']} HR/LR pairs (x{args.scale}, {args.degradation}) from {s['images']} images{sizes} "
          f"-> {args.out} ({s['bytes'] / 1e6:.1f} MB, {s['bytes_per_pair'] / 1e3:.0f} KB a pair, "
          f"{s['seconds']:.1f} s)")
    if s["skipped"]:
        why = ", ".join(f"{n} {kind}" for kind, n in s["skipped_why"].items())
        print(f"skipped {s['skipped']} image{'s' * (s['skipped'] != 1)} ({why}; each named in a warning above)")
    return 0
