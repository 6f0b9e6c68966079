"""``prfdn export``: a model as a PyTorch state dict, an ONNX model or our ``.safetensors``."""

from __future__ import annotations

from pathlib import Path

from prfdn_jax.commands.common import CLIError, add_model_args, check_outputs, check_writable, resolve_model

HELP = "write a model as a PyTorch state dict, an ONNX model or our .safetensors"
SUFFIXES = {"torch": (".pth", ".pt"), "onnx": (".onnx",), "safetensors": (".safetensors",)}  # first: the usual one


def add_arguments(x) -> None:
    from prfdn_jax.export import FORMATS, RANGES

    add_model_args(x, required=True)
    x.add_argument("--format", required=True, choices=FORMATS,
                   help="torch: plain state dict with the released key names (torch.load(weights_only=True)); "
                        "onnx: dynamic batch/height/width, opset 17; safetensors: our model file. torch and onnx "
                        "take RGB (NCHW) in [0, 255] and return [0, 255], not clamped (see --range)")
    x.add_argument("--range", choices=RANGES, default="255", dest="value_range",
                   help="value range of the exported network's input and output: 255 (default, the released "
                        "weights' convention) or 01: takes and returns [0, 1] (the /255 folded exactly into the "
                        "first conv and the output's *255 into the last conv; torch and onnx only)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing OUT (never the input weights)")
    x.add_argument("out", metavar="OUT", help="output file (.pth / .onnx / .safetensors)")


def _input_file(args) -> str | None:
    """The file the weights are read from (--weights, or the built-in model's packaged file)."""
    if args.weights:
        return args.weights
    from prfdn_jax import registry

    return str(registry.info(args.model).path)


def run(args) -> int:
    from prfdn_jax.export import export

    out = Path(args.out)
    suffix = SUFFIXES[args.format]
    if out.suffix.lower() not in suffix:
        raise CLIError(f"{out}: a --format {args.format} file is named *{suffix[0]}")
    if args.value_range != "255" and args.format == "safetensors":
        raise CLIError(f"--range {args.value_range} is for --format torch and onnx: a prfdn .safetensors model "
                       "takes [0, 255]")
    check_writable(out)
    check_outputs([out], [_input_file(args)], args.overwrite)
    model, label = resolve_model(args)
    path = export(model, args.format, out, value_range=args.value_range)
    a = model.arch
    rng = "[0, 1]" if args.value_range == "01" else "[0, 255]"
    print(f"{label} ({a.form} {a.layout}, x{a.scale}) -> {path} ({args.format}, RGB in and out in {rng})")
    return 0
