"""``prfdn verify``: one input through JAX, the PyTorch reference and an ONNX file; the differences."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prfdn_jax.commands.common import EXIT_ERROR, CLIError, add_model_args, resolve_model
from prfdn_jax.fileio import no_such

HELP = "run one input through JAX, the PyTorch reference and an ONNX file; compare"


def add_arguments(v) -> None:
    add_model_args(v, required=True)
    v.add_argument("--image", metavar="IMG", help="input image (default: a fixed random 64x64 image)")
    v.add_argument("--onnx", metavar="FILE", help="also run this ONNX file (onnxruntime, CPU)")
    v.add_argument("--torch", metavar="FILE", help="check this exported .pth instead of the model's own weights")
    v.add_argument("--tolerance", type=float, default=1e-2,
                   help="absolute part of the largest max abs difference allowed on the [0, 255] output "
                        "(default 0.01); a pair fails above TOLERANCE + RTOL x the output's range (max - min)")
    v.add_argument("--rtol", type=float, default=5e-4,
                   help="relative part, a fraction of the JAX output's range (default 0.0005: 0.14 on an ordinary "
                        "[0, 255] output; more where a network returns values far outside it, e.g. rfdn-x4 near "
                        "8000 on a checkerboard). An output holding NaN or Inf always fails")
    v.add_argument("--json", action="store_true", help="last stdout line: one JSON object")


def run(args) -> int:
    from prfdn_jax.verify import verify

    if args.image and not Path(args.image).is_file():
        raise CLIError(f"{args.image}: {no_such(args.image, 'file')}")
    if args.onnx and not Path(args.onnx).is_file():
        raise CLIError(f"{args.onnx}: {no_such(args.onnx, 'file')}")
    model, label = resolve_model(args)
    res = verify(model, args.image, args.onnx, args.tolerance, torch_path=args.torch, rtol=args.rtol)
    for line in res.lines():
        print(line)
    if args.json:
        print(json.dumps(res.to_dict(), allow_nan=False))
    if not res.ok:
        bad = sorted({name for c in res.comparisons for name, _ in c.nonfinite})
        why = (f"the {', '.join(bad)} output holds NaN or Inf" if bad else
               f"outputs differ by more than {res.allowed:.3g} (tolerance {args.tolerance:g} + rtol {args.rtol:g} x "
               f"output range {res.output_range:.4g})")
        print(f"prfdn: error: {label}: {why} (see above)", file=sys.stderr)
        return EXIT_ERROR
    return 0
