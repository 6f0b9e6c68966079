"""``prfdn export``: a model as a PyTorch state dict, an ONNX model or our ``.safetensors``."""

from __future__ import annotations

from pathlib import Path

from prfdn_jax.commands.common import CLIError, add_model_args, check_writable, resolve_model

HELP = "write a model as a PyTorch state dict, an ONNX model or our .safetensors"
SUFFIXES = {"torch": (".pth", ".pt"), "onnx": (".onnx",), "safetensors": (".safetensors",)}  # first: the usual one


def add_arguments(x) -> None:
    from prfdn_jax.export import FORMATS

    add_model_args(x, required=True)
    x.add_argument("--format", required=True, choices=FORMATS,
                   help="torch: plain state dict with the released key names (torch.load(weights_only=True)); "
                        "onnx: dynamic batch/height/width, opset 17; safetensors: our model file")
    x.add_argument("out", metavar="OUT", help="output file (.pth / .onnx / .safetensors)")


def run(args) -> int:
    from prfdn_jax.export import export

    out = Path(args.out)
    suffix = SUFFIXES[args.format]
    if out.suffix.lower() not in suffix:
        raise CLIError(f"{out}: a --format {args.format} file is named *{suffix[0]}")
    check_writable(out)
    model, label = resolve_model(args)
    path = export(model, args.format, out)
    a = model.arch
    print(f"{label} ({a.form} {a.layout}, x{a.scale}) -> {path} ({args.format})")
    return 0
