"""``prfdn reparam``: a branch network's branches merged into one wide (or dense merged) network, exactly."""

from __future__ import annotations

from prfdn_jax.commands.common import CLIError, check_model_dst, check_outputs

HELP = "merge a branch network's branches into one wide network (exact)"


def add_arguments(r) -> None:
    r.add_argument("src", metavar="SRC", help="branch checkpoint (.pth or ours)")
    r.add_argument("dst", metavar="DST", help="output model file (.safetensors)")
    r.add_argument("--merged", action="store_true",
                   help="write the dense merged layout (concat/split as 1x1 convs) instead of the grouped wide one")
    r.add_argument("--overwrite", action="store_true", help="replace an existing DST (never SRC)")


def _check_equal(a, b, size: int = 48) -> float:
    """Max relative difference of two networks' outputs on a random [0, 255] input."""
    import jax
    import numpy as np

    from prfdn_jax.inference import make_apply

    x = np.asarray(jax.random.uniform(jax.random.key(0), (1, size, size, 3))) * 255
    ya, yb = np.asarray(make_apply(a)(x)), np.asarray(make_apply(b)(x))
    return float(np.abs(ya - yb).max() / max(np.abs(ya).max(), 1e-12))


def run(args) -> int:
    from prfdn_jax.checkpoint import load_any, save_model
    from prfdn_jax.macs import params
    from prfdn_jax.reparam import reparam, wide_to_merged

    check_model_dst(args.dst)
    check_outputs([args.dst], [args.src], args.overwrite)
    src = load_any(args.src)
    if src.arch.form == "merged":
        raise CLIError(f"{args.src}: already a merged network; reparam takes a branch network")
    if src.arch.layout == "rfdn":
        raise CLIError(f"{args.src}: an RFDN has no branches to merge (branch it first)")
    out = wide_to_merged(src) if args.merged else reparam(src)
    diff = _check_equal(src, out)
    save_model(args.dst, out)
    print(f"{args.src} ({src.arch.form} {src.arch.layout}, {params(src):,} params) -> {args.dst} "
          f"({out.arch.form}, {params(out):,} params); max relative output difference {diff:.2e}")
    return 0
