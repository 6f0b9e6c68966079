"""The ``prfdn`` command: upscale, eval, models, reparam, prune, train, pipeline, bench.

One convention for every subcommand: bad input (a missing file, a bad config, weights that do not
load, a missing optional dependency, a diverged training run) ends in exactly one line on stderr,
``prfdn: error: ...``, and exit status 1, never a traceback (``PRFDN_DEBUG=1`` shows it); a command
line argparse rejects exits 2 with argparse's usage message; Ctrl-C exits 130. Outputs are written
atomically, so a failure leaves no file. The command bodies are in :mod:`prfdn_jax.commands`,
:mod:`prfdn_jax.commands_images` and :mod:`prfdn_jax.commands_train`. Python warnings print as one line each, ``prfdn: warning: ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from prfdn_jax import commands as C
from prfdn_jax import commands_data as D
from prfdn_jax import commands_export as X
from prfdn_jax import commands_images as I
from prfdn_jax import commands_train as T
from prfdn_jax.backends import configure_xla_flags
from prfdn_jax.config import STAGES
from prfdn_jax.extras import MissingExtra
from prfdn_jax.spec import LAYOUTS

DTYPE_CHOICES = ("float32", "float16", "bfloat16")
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
CLIError = C.CLIError


def _add_model_args(p: argparse.ArgumentParser, required: bool = False,
                    scale_help: str = "upscaling factor: picks the built-in model of that scale (default "
                                      "prfdn-x2); with --model/--weights, checks that the model has it") -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--model", metavar="NAME", help="built-in model (see `prfdn models`)")
    g.add_argument("--weights", metavar="PATH",
                   help="PyTorch .pth state dict (needs the torch extra), a prfdn-jax .safetensors model, "
                        "or a training workdir")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help=scale_help)


def _add_memory_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory-budget", type=float, metavar="GB",
                   help="memory an image may use; larger images are upscaled in tiles that fit (default: 25%% of "
                        "the available memory, at most 2 GB)")


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version

        return dist_version("prfdn-jax")
    except (ImportError, PackageNotFoundError):
        import prfdn_jax

        return getattr(prfdn_jax, "__version__", "unknown")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prfdn", description="PRFDN real-time super-resolution in JAX")
    p.add_argument("--version", action="version", version=f"prfdn {version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    u = sub.add_parser("upscale", help="upscale images with a built-in or given model")
    u.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    u.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one input image) or folder (several inputs, or a folder input)")
    _add_model_args(u)
    u.add_argument("--tile", type=int, default=0, metavar="PX",
                   help="run in PX x PX tiles, batched, overlaps feathered (default 0: the whole image, or "
                        "automatic tiles when it does not fit --memory-budget)")
    u.add_argument("--overlap", type=int, default=None, metavar="PX",
                   help="LR pixels shared by neighbouring tiles (default 16: Urban100 within 0.002 dB of whole images)")
    u.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                   help="compute dtype (float16/bfloat16: faster on GPUs; the output tail stays float32)")
    _add_memory_budget(u)
    u.add_argument("--overwrite", action="store_true", help="allow an output to replace an input image")
    u.add_argument("--crf", type=int, default=18, metavar="N",
                   help="video: x264 quality 0..51, lower is better (default 18, visually lossless)")
    u.add_argument("--lossless", action="store_true", help="video: lossless RGB H.264 (libx264rgb)")
    u.set_defaults(func=I.cmd_upscale)

    x = sub.add_parser("export", help="write a model as a PyTorch state dict, an ONNX model or our .safetensors")
    _add_model_args(x, required=True)
    x.add_argument("--format", required=True, choices=("torch", "onnx", "safetensors"),
                   help="torch: plain state dict with the released key names (torch.load(weights_only=True)); "
                        "onnx: dynamic batch/height/width, opset 17; safetensors: our model file")
    x.add_argument("out", metavar="OUT", help="output file (.pth / .onnx / .safetensors)")
    x.set_defaults(func=X.cmd_export)

    v = sub.add_parser("verify", help="run one input through JAX, the PyTorch reference and an ONNX file; compare")
    _add_model_args(v, required=True)
    v.add_argument("--image", metavar="IMG", help="input image (default: a fixed random 64x64 image)")
    v.add_argument("--onnx", metavar="FILE", help="also run this ONNX file (onnxruntime, CPU)")
    v.add_argument("--torch", metavar="FILE", help="check this exported .pth instead of the model's own weights")
    v.add_argument("--tolerance", type=float, default=1e-2,
                   help="largest max abs difference on the [0, 255] output allowed (default 0.01)")
    v.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    v.set_defaults(func=X.cmd_verify)

    e = sub.add_parser("eval", help="PSNR/SSIM on a folder with HR/ (and optional LR_bicubic/X{S}/)")
    _add_model_args(e, required=True, scale_help="the scale to evaluate: checks that the model is xS (LR images "
                                                 "are taken from LR_bicubic/XS/ or made from HR at that scale)")
    e.add_argument("--data", required=True, metavar="DIR",
                   help="evaluation set: a folder with HR/ images and optional LR_bicubic/X{S}/{name}x{S}.png")
    e.add_argument("--degradation", choices=("matlab", "ntire"), default="matlab",
                   help="LR when made from HR: MATLAB bicubic (default; shipped LR used when present) "
                        "or NTIRE (PIL bicubic + JPEG 90, always made from HR)")
    e.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32", help="compute dtype (default float32)")
    e.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    _add_memory_budget(e)
    e.set_defaults(func=I.cmd_eval)

    m = sub.add_parser("models", help="list built-in models, or describe a weights file")
    m.add_argument("--weights", metavar="PATH",
                   help="describe this model file instead (.pth, .safetensors or a training workdir): scale, "
                        "form, layout, parameters, GMACs")
    m.add_argument("--json", action="store_true", help="print JSON (a list of models, or one object)")
    m.set_defaults(func=I.cmd_models)

    r = sub.add_parser("reparam", help="merge a branch network's branches into one wide network (exact)")
    r.add_argument("src", metavar="SRC", help="branch checkpoint (.pth or ours)")
    r.add_argument("dst", metavar="DST", help="output model file (.safetensors)")
    r.add_argument("--merged", action="store_true",
                   help="write the dense merged layout (concat/split as 1x1 convs) instead of the grouped wide one")
    r.set_defaults(func=C.cmd_reparam)

    q = sub.add_parser("prune", help="prune a wide/merged network with Torch-Pruning (needs the torch extra)")
    q.add_argument("src", metavar="SRC", help="network to prune (.pth, .safetensors or a training workdir)")
    q.add_argument("dst", metavar="DST", help="output model file (.safetensors)")
    q.add_argument("--ratio", type=float, required=True, help="channel pruning ratio, between 0 and 1 exclusive")
    q.add_argument("--steps", type=int, default=1, help="iterative pruning steps (default 1)")
    q.add_argument("--uniform", action="store_true",
                   help="keep every branch the same width: the result stays a wide (grouped) network "
                        "(default for a branch/wide input)")
    q.add_argument("--free", action="store_true",
                   help="any width per layer: merge into the dense layout first, then prune "
                        "(default for a merged input; merging multiplies a wide net's parameters by ~N)")
    q.add_argument("--importance", default="magnitude", choices=("magnitude", "l1", "l2", "random", "taylor"),
                   help="how channels are ranked for removal (Torch-Pruning importance; default magnitude; "
                        "taylor needs gradients)")
    q.add_argument("--finetune-steps", type=int, default=0, metavar="N",
                   help="training steps after each pruning step to recover quality (needs --data; default 0)")
    q.add_argument("--data", nargs="+", metavar="DIR", help="training images for finetuning")
    q.add_argument("--config", metavar="CONFIG",
                   help="training config for finetuning (module, file.py[:function]); default: the packaged "
                        "smoke config (experiments.smoke_x2) with the network's scale and a 24*scale px patch")
    q.add_argument("--val", metavar="DIR", help="validation folder with HR/ (PSNR per step)")
    q.set_defaults(func=T.cmd_prune)

    t = sub.add_parser("train", help="train (or resume) a network from a config (see experiments/)")
    t.add_argument("config", help="config file or module (path.py[:function])")
    t.add_argument("--workdir", required=True, help="run folder; resumes from its latest checkpoint")
    t.add_argument("--data", nargs="+", metavar="DIR", help="HR training image folders")
    t.add_argument("--val", nargs="+", metavar="DIR", help="HR validation folders (LR: MATLAB bicubic)")
    t.add_argument("--steps", type=int, help="total steps (overrides the config)")
    t.add_argument("--stage", help="for a pipeline config: the stage to train (rfdn, branch, finetune)")
    t.add_argument("--init", metavar="PATH", help="start from these weights (.pth, .safetensors, workdir)")
    t.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config fields")
    t.set_defaults(func=T.cmd_train)

    pl = sub.add_parser("pipeline", help="the four-stage PRFDN recipe with a report (RFDN -> branch -> reparam -> prune)")
    pl.add_argument("config", help="pipeline config file or module (path.py[:function])")
    pl.add_argument("--data", nargs="+", metavar="DIR", help="HR training image folders (default: the config's)")
    pl.add_argument("--workdir", required=True,
                    help="run folder: one subfolder per stage, the report; resumes what it holds")
    pl.add_argument("--val", nargs="+", metavar="DIR", help="HR validation folders for the training stages")
    pl.add_argument("--stages", nargs="+", choices=STAGES,
                    help="stages to run (the stages they build on are run too, or reused from the workdir)")
    pl.set_defaults(func=T.cmd_pipeline)

    b = sub.add_parser("bench", help="benchmark tables: JAX vs every PyTorch mode on the same weights, or the "
                                     "apply paths (`prfdn bench paths`)")
    b.add_argument("what", nargs="?", choices=("paths", "data", "train"),
                   help="paths: the wide apply paths of a branch network; data: training-input throughput; "
                        "train: one training step, JAX (each path x dtype) vs PyTorch (each mode)")
    _add_model_args(b)
    b.add_argument("--size", metavar="HxW", help="input size (default 540x960; paths: one number, default 128)")
    b.add_argument("--batch", type=int, help="images per call (default 1; train: 16; data: 16)")
    b.add_argument("--dtype", choices=DTYPE_CHOICES, help="compute dtype (default float32; train: fp32 and bf16)")
    b.add_argument("--backend", choices=("jax", "torch", "both"),
                   help="which side to time (torch needs the torch extra; default both)")
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
    b.set_defaults(func=_bench)

    pr = sub.add_parser("prepare", help="cut training images into HR sub-images with their exact LR (ArrayRecord), "
                                        "for fast training input")
    pr.add_argument("data", nargs="+", metavar="DIR", help="folders of HR training images")
    pr.add_argument("--out", required=True, metavar="PATH",
                    help="a .array_record file (sidecar .json beside it) or a folder; give it to train --data")
    pr.add_argument("--scale", type=int, required=True, choices=(2, 3, 4), help="upscaling factor of the LR")
    pr.add_argument("--sub-size", type=int, default=480, help="HR sub-image side (default 480)")
    pr.add_argument("--step", type=int, default=240, help="stride between sub-images (default 240)")
    pr.add_argument("--degradation", choices=("matlab", "ntire"), default="matlab",
                    help="how LR is made: MATLAB bicubic (default) or NTIRE (PIL bicubic + JPEG 90)")
    pr.add_argument("--workers", type=int, default=0, help="worker processes (default 0)")
    pr.add_argument("--compression", choices=("none", "zstd"), default="none",
                    help="record compression (zstd: 15%% smaller, 2x slower to read; default none)")
    pr.set_defaults(func=D.cmd_prepare)
    return p


def _bench(args) -> int:
    args.dtype_given = args.dtype is not None
    if args.what == "data":
        return D.cmd_bench_data(args)
    if args.what == "train":
        return D.cmd_bench_train(args)
    args.dtype = args.dtype or "float32"
    args.batch = args.batch or 1
    return C.cmd_bench(args)


def _known_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's input, not a bug: reported as ``prfdn: error: ...``."""
    from prfdn_jax.checkpoint import WeightsError
    from prfdn_jax.imaging import ImageError
    from prfdn_jax.registry import UnknownModelError
    from prfdn_jax.train import TrainingDiverged

    return (CLIError, MissingExtra, WeightsError, ImageError, UnknownModelError, TrainingDiverged, ValueError,
            OSError)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Python warnings (Pillow's DecompressionBombWarning, a UserWarning, ...) as one line each (set as
    ``warnings.formatwarning``, so ``warnings.catch_warnings(record=True)`` still records them)."""
    return f"prfdn: warning: {C.clean_message(str(message))}\n"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 1 error, 2 bad command line, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    configure_xla_flags()  # before JAX starts a backend; the user's XLA_FLAGS win
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, argparse printed the usage)
        return EXIT_USAGE if isinstance(e.code, str) else int(e.code or 0)
    formatter = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        return _run(args)
    finally:
        warnings.formatwarning = formatter


def _run(args) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        resume = "; resume with the same --workdir" if args.cmd in ("train", "pipeline") else ""
        print(f"prfdn: interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into one line
        if os.environ.get("PRFDN_DEBUG"):
            raise
        prefix = "error" if isinstance(e, _known_errors()) else f"internal error ({type(e).__name__})"
        text = C.one_line(e)
        if isinstance(e, MemoryError) or "out of memory" in text.lower():
            hint = "; try --tile PX or a lower --memory-budget" if args.cmd in ("upscale", "eval") else ""
            prefix, text = "error", ("out of memory" if text == "out of memory" else f"out of memory ({text})") + hint
        print(f"prfdn: {prefix}: {text}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
