"""The bodies of the ``prfdn`` commands; :mod:`prfdn_jax.cli` parses the command line and reports errors.

Each ``cmd_*(args)`` takes the parsed arguments and returns an exit status; bad input raises
:class:`CLIError` (or another one-line error the CLI reports). Every option is checked before any
slow work starts. Heavy modules are imported by the command that needs them, so ``prfdn --help`` and
``prfdn models`` start fast. This module: the shared helpers, reparam and bench;
:mod:`prfdn_jax.commands_images`: upscale, eval, models; :mod:`prfdn_jax.commands_train`: prune, train,
pipeline.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from prfdn_jax.extras import require_torch

EXIT_ERROR = 1
MODEL_SUFFIX = ".safetensors"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


# ----------------------------------------------------------------------------- messages
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_TMP_FILE = re.compile(r"\.([^/\s'\"]+)\.[A-Za-z0-9_]{8}\.tmp\b")  # atomic writes: .NAME.XXXXXXXX.tmp -> NAME
_TMP_DIR = re.compile(r"[^\s'\"(]*prfdn_finetune_[A-Za-z0-9_]+(/[^\s'\")]*)?")
# a wrapper's detail that is only an exception name, or a number (a pickle KeyError): "state dict (EOFError)"
_BARE_DETAIL = re.compile(r"(?:\((?:[A-Z]\w*(?:Error|Exception))\)|(?<=dict|file|mage|ckpt) \(\d+\))$")
_TORCH_WEIGHTS_ONLY = re.compile(r"\(Weights only load failed\..*\)?$")
_BARE_TEXT = {"EOFError": "truncated or empty file", "MemoryError": "out of memory",
              "UnpicklingError": "corrupt file", "StopIteration": "no data"}


def clean_message(text: str) -> str:
    """The first line of ``text`` without terminal colour codes or our temporary file names, with a
    useful detail where the only one is an exception name or a bare number."""
    text = _ANSI.sub("", text).strip()
    text = text.splitlines()[0].strip() if text else ""
    text = _TMP_DIR.sub("the temporary finetuning folder", _TMP_FILE.sub(r"\1", text))
    text = _TORCH_WEIGHTS_ONLY.sub("(it holds pickled objects other than tensors, which prfdn never runs; re-save "
                                   "it as a plain state dict: torch.save(model.state_dict(), path))", text)

    def bare(m: re.Match) -> str:
        what = m.group(0).strip(" ()")
        lead = " " if m.group(0).startswith(" ") else ""
        return f"{lead}({_BARE_TEXT.get(what, 'corrupt or truncated file' if what.isdigit() else what)})"

    return _BARE_DETAIL.sub(bare, text)


def one_line(e: BaseException) -> str:
    """``e`` as one useful line (see :func:`clean_message`)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
    text = clean_message(text)
    if not text or text.isdigit():
        name = type(e).__name__
        text = _BARE_TEXT.get(name, name) + (f" ({text})" if text else "")
    return text


# ----------------------------------------------------------------------------- helpers
def _progress(items, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", file=sys.stderr, disable=total <= 1,
                dynamic_ncols=True, leave=False)


def check_model_args(args) -> None:
    """A ``--model`` name must be a built-in one (checked before any file is read)."""
    from prfdn_jax import registry

    if getattr(args, "model", None):
        registry.info(args.model)


def resolve_model(args):
    """(model, label) from --model / --weights / --scale."""
    from prfdn_jax import registry
    from prfdn_jax.checkpoint import load_any

    if args.weights:
        notes: list[str] = []
        model, label = load_any(args.weights, notes), str(args.weights)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        label = args.model or registry.for_scale(args.scale)
        model = registry.load(label)
    if args.scale and model.arch.scale != args.scale:
        raise CLIError(f"{label} is an x{model.arch.scale} model but --scale {args.scale} was given")
    return model, label


def check_writable(path: Path, what: str = "output", folder: bool = False) -> None:
    """``path`` (a file, or a ``folder``) can be written: its folder exists or can be created, and is
    writable (checked before any work)."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise CLIError(f"{path}: is a folder; the {what} needs a file name")
    anc = path if folder else path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise CLIError(f"{path}: cannot create the {what} there: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise CLIError(f"{path}: cannot write the {what}: folder {anc} is not writable")


def check_model_dst(dst: str) -> Path:
    """The output model file: a writable ``.safetensors`` path."""
    p = Path(dst)
    if p.suffix.lower() in (".pth", ".pt"):
        raise CLIError(f"{p}: prfdn writes prfdn-jax {MODEL_SUFFIX} model files; use a {MODEL_SUFFIX} name "
                       "(for a PyTorch .pth, run prfdn export --format torch on it)")
    if p.suffix.lower() != MODEL_SUFFIX:
        raise CLIError(f"{p}: unknown model file extension {p.suffix or '(none)'!r}; use a {MODEL_SUFFIX} name")
    check_writable(p, "model file")
    return p


def eval_set(data: Path, scale: int, degradation: str = "matlab") -> list:
    """The images of a folder with ``HR/`` (and optional ``LR_bicubic/X{s}/``); see :mod:`prfdn_jax.evaluate`."""
    from prfdn_jax.evaluate import load_eval_set

    hr_dir = data / "HR"
    if not data.is_dir():
        raise CLIError(f"{data}: no such folder")
    if not hr_dir.is_dir():
        raise CLIError(f"{data}: no HR/ folder (expected {hr_dir})")
    items = load_eval_set(data, scale, degradation=degradation)
    if not items:
        raise CLIError(f"{hr_dir}: no images")
    return items


# ----------------------------------------------------------------------------- reparam
def _check_equal(a, b, size: int = 48) -> float:
    """Max relative difference of two networks' outputs on a random [0, 255] input."""
    import jax
    import numpy as np

    from prfdn_jax.inference import make_apply

    x = np.asarray(jax.random.uniform(jax.random.key(0), (1, size, size, 3))) * 255
    ya, yb = np.asarray(make_apply(a)(x)), np.asarray(make_apply(b)(x))
    return float(np.abs(ya - yb).max() / max(np.abs(ya).max(), 1e-12))


def cmd_reparam(args) -> int:
    from prfdn_jax.checkpoint import load_any, save_model
    from prfdn_jax.macs import params
    from prfdn_jax.reparam import reparam, wide_to_merged

    check_model_dst(args.dst)
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


# ----------------------------------------------------------------------------- bench
def _size(text: str, what: str = "--size") -> tuple[int, int]:
    """``'540x960'`` -> (540, 960); ``'256'`` -> (256, 256); each side at least MIN_SIZE."""
    from prfdn_jax.spec import MIN_SIZE

    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < MIN_SIZE:
        raise CLIError(f"{what} {text!r}: expected HxW (or one number) with both sides >= {MIN_SIZE}")
    return parts[0], parts[1]


def _check_positive(args, names: dict[str, int]) -> None:
    for name, low in names.items():
        v = getattr(args, name.lstrip("-").replace("-", "_"))
        if v is not None and v < low:
            raise CLIError(f"{name} must be >= {low}, got {v}")


def _refuse_options(args, names: tuple[str, ...], why: str) -> None:
    given = [n for n in names if getattr(args, n.lstrip("-").replace("-", "_")) not in (None, False)]
    if given:
        raise CLIError(f"{', '.join(given)}: {'an option' if len(given) == 1 else 'options'} {why}")


def cmd_bench(args) -> int:
    """``prfdn bench paths`` or the inference benchmark (JAX deployed vs every PyTorch mode)."""
    from prfdn_jax import bench

    _check_positive(args, {"--batch": 1, "--runs": 1, "--warmup": 0, "--nf": 2, "--repeats": 1, "--workers": 0})
    _refuse_options(args, ("--data", "--patch"), "of `prfdn bench data` only")
    if args.what == "paths":
        _refuse_options(args, ("--model", "--weights", "--scale", "--backend", "--torch-modes", "--warmup", "--runs",
                               "--baseline", "--json"), "of `prfdn bench`, not of `prfdn bench paths`")
        size = _size(args.size or "128")[0]
        layout, nf, repeats = args.layout or "b4s", args.nf or 50, args.repeats or 5
        bench.print_paths(bench.bench_paths(layout, nf, size, args.batch, repeats), layout, nf, size, args.batch,
                          repeats)
        return 0
    _refuse_options(args, ("--layout", "--nf", "--repeats"), "of `prfdn bench paths` only")
    size = _size(args.size or "540x960")
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
