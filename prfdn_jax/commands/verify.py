"""``prfdn verify``: one input through JAX, the PyTorch reference and an ONNX file; the differences."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prfdn_jax.commands.common import EXIT_ERROR, CLIError, add_model_args, resolve_model

HELP = "run one input through JAX, the PyTorch reference and an ONNX file; compare"


def add_arguments(v) -> None:
    add_model_args(v, required=True)
    v.add_argument("--image", metavar="IMG", help="input image (default: a fixed random 64x64 image)")
    v.add_argument("--onnx", metavar="FILE", help="also run this ONNX file (onnxruntime, CPU)")
    v.add_argument("--torch", metavar="FILE", help="check this exported .pth instead of the model's own weights")
    v.add_argument("--tolerance", type=float, default=1e-2,
                   help="largest max abs difference on the [0, 255] output allowed (default 0.01)")
    v.add_argument("--json", action="store_true", help="last stdout line: one JSON object")


def run(args) -> int:
    from prfdn_jax.verify import verify

    if args.image and not Path(args.image).is_file():
        raise CLIError(f"{args.image}: no such file")
    if args.onnx and not Path(args.onnx).is_file():
        raise CLIError(f"{args.onnx}: no such file")
    model, label = resolve_model(args)
    res = verify(model, args.image, args.onnx, args.tolerance, torch_path=args.torch)
    for line in res.lines():
        print(line)
    if args.json:
        print(json.dumps(res.to_dict()))
    if not res.ok:
        print(f"prfdn: error: {label}: outputs differ by more than {args.tolerance:g} (see above)", file=sys.stderr)
        return EXIT_ERROR
    return 0
