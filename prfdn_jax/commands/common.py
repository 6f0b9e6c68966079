"""What the ``prfdn`` commands share: the one-line error and its message, the model and memory options,
output and folder checks, automatic tiles, option parsing.

Light on purpose (imported when the parser is built): heavy modules are imported inside the helpers.
A command imports the owner of a vocabulary (``choices``) inside its ``add_arguments`` when the owner
is heavy: :mod:`prfdn_jax.cli` adds the options of the command being run only.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

EXIT_ERROR = 1
MODEL_SUFFIX = ".safetensors"
SCALES = (2, 3, 4)  # the upscaling factors of the built-in models and of training data


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


# ----------------------------------------------------------------------------- messages
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# a wrapper's detail that is only an exception name, or a number (a pickle KeyError): "state dict (EOFError)"
_BARE_DETAIL = re.compile(r"(?:\((?:[A-Z]\w*(?:Error|Exception))\)|(?<=dict|file|mage|ckpt) \(\d+\))$")
_TORCH_WEIGHTS_ONLY = re.compile(r"\(Weights only load failed\..*\)?$")
_BARE_TEXT = {"EOFError": "truncated or empty file", "MemoryError": "out of memory",
              "UnpicklingError": "corrupt file", "StopIteration": "no data"}


def clean_message(text: str) -> str:
    """The first line of ``text`` without terminal colour codes (torch's), torch's weights-only advice
    replaced by ours, with a useful detail where the only one is an exception name or a bare number."""
    text = _ANSI.sub("", text).strip()
    text = text.splitlines()[0].strip() if text else ""
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


# ----------------------------------------------------------------------------- shared options
def add_model_args(p, required: bool = False,
                   scale_help: str = "upscaling factor: picks the built-in model of that scale (default "
                                     "prfdn-x2); with --model/--weights, checks that the model has it") -> None:
    """``--model NAME | --weights PATH`` and ``--scale S``."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--model", metavar="NAME", help="built-in model (see `prfdn models`)")
    g.add_argument("--weights", metavar="PATH",
                   help="PyTorch .pth state dict (needs the torch extra), a prfdn-jax .safetensors model, "
                        "or a training workdir")
    p.add_argument("--scale", type=int, choices=SCALES, help=scale_help)


def add_memory_budget(p) -> None:
    p.add_argument("--memory-budget", type=float, metavar="GB",
                   help="memory an image may use; larger images are upscaled in tiles that fit (default: 25%% of "
                        "the available memory, at most 2 GB)")


def add_compile_cache(p) -> None:
    """``--no-compile-cache``; its presence makes :mod:`prfdn_jax.cli` turn the persistent cache on."""
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not keep compiled programs across runs (default: kept in $PRFDN_CACHE_DIR, else "
                        "~/.cache/prfdn/jax, at most 1 GB; PRFDN_CACHE_DIR=off also turns it off)")


def parse_bucket(text: str) -> int | str:
    """``--bucket``: ``auto``, ``off`` (0) or a multiple in pixels; argparse reports a bad one (exit 2)."""
    import argparse

    t = text.strip().lower()
    if t in ("auto", "off"):
        return t
    try:
        px = int(t)
    except ValueError:
        px = -1
    if px < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, off or a number of pixels")
    return px or "off"


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


# ----------------------------------------------------------------------------- paths
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


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file: equal after resolving symlinks, ``.``/``..`` and the
    working folder, or the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (or cannot be reached)
        return False


def check_outputs(outputs, inputs, overwrite: bool = False, replaceable=()) -> None:
    """The rule of every command that writes files: an output is never one of the ``inputs`` (compared by
    :func:`same_file`; even with ``--overwrite``: the command reads it), and an existing output is replaced
    only with ``overwrite`` (``replaceable``: outputs that are always rewritten, e.g. a report beside DST)."""
    inputs = [p for p in inputs if p]
    for out in outputs:
        for src in inputs:
            if same_file(out, src):
                same = os.path.abspath(out) == os.path.abspath(src)
                why = "" if same else f" (the same file: {os.path.realpath(src)})"
                raise CLIError(f"{out}: is the input {src}{why}; refusing to write onto an input, even with "
                               "--overwrite: choose another output name")
        if os.path.lexists(out) and not overwrite and out not in replaceable and not os.path.isdir(out):
            raise CLIError(f"{out}: exists (add --overwrite to replace it)")


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


def check_run_folders(args) -> None:
    """--workdir can be a folder; every --data / --val folder exists (before the config's network is built)."""
    wd = Path(args.workdir)
    if wd.exists() and not wd.is_dir():
        raise CLIError(f"--workdir {wd}: exists and is not a folder")
    if not wd.exists():
        check_writable(wd, "workdir", folder=True)
    for opt, dirs in (("--data", args.data), ("--val", args.val)):
        for d in dirs or ():
            prepared = opt == "--data" and Path(d).suffix == ".array_record"  # prfdn prepare's output file
            if not (Path(d).is_dir() or (prepared and Path(d).is_file())):
                raise CLIError(f"{opt} {d}: no such {'file' if prepared else 'folder'}")


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


# ----------------------------------------------------------------------------- automatic tiles (upscale, eval)
def budget_gb(args) -> float:
    """``--memory-budget`` in GB, or the default budget."""
    from prfdn_jax.inference import default_budget_gb

    if args.memory_budget is None:
        return default_budget_gb()
    if not args.memory_budget > 0:
        raise CLIError(f"--memory-budget must be more than 0 GB, got {args.memory_budget}")
    return args.memory_budget


def auto_tile(model, h: int, w: int, budget: float, overlap: int, alpha: bool = False) -> int:
    """The tile for an ``h x w`` image within ``budget`` GB (0: whole image); MemoryError's text when none fits."""
    from prfdn_jax.inference import GB, choose_tile, device_memory

    try:
        return choose_tile(model.arch, h, w, budget * GB, overlap, device_bytes=device_memory(), alpha=alpha)
    except MemoryError as e:
        raise CLIError(f"{w}x{h} x{model.arch.scale} {e}, more than the {budget:g} GB memory budget "
                       "(raise --memory-budget)") from None


# ----------------------------------------------------------------------------- option values
def parse_size(text: str, what: str = "--size") -> tuple[int, int]:
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


def check_positive(args, names: dict[str, int]) -> None:
    """Each option of ``names`` (``{"--runs": 1}``) that was given is at least its value."""
    for name, low in names.items():
        v = getattr(args, name.lstrip("-").replace("-", "_"))
        if v is not None and v < low:
            raise CLIError(f"{name} must be >= {low}, got {v}")


def refuse_options(args, names: tuple[str, ...], why: str) -> None:
    """CLIError naming the options of ``names`` that were given (``why``: whose options they are)."""
    given = [n for n in names if getattr(args, n.lstrip("-").replace("-", "_")) not in (None, False)]
    if given:
        raise CLIError(f"{', '.join(given)}: {'an option' if len(given) == 1 else 'options'} {why}")
