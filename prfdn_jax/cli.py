"""The ``prfdn`` command line: the parser, built from the command modules, and what a run ends in.

Each command is one module of :mod:`prfdn_jax.commands` (named in :data:`COMMANDS`, the order of
``prfdn --help``) with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; their shared
helpers are in :mod:`prfdn_jax.commands.common`. A command imports its heavy modules inside ``run``,
so ``prfdn --help`` starts fast and only the commands that need PyTorch import it.

One convention for every command: bad input (a missing file, a bad config, weights that do not
load, a missing optional dependency, a diverged training run) ends in exactly one line on stderr,
``prfdn: error: ...``, and exit status 1, never a traceback (``PRFDN_DEBUG=1`` shows it); a command
line argparse rejects exits 2 with argparse's usage message; Ctrl-C exits 130 and SIGTERM 143, each with
one line: SIGTERM is raised in the main thread as :class:`Terminated`, a KeyboardInterrupt, so it unwinds
like Ctrl-C (training checkpoints first: ``commands/train.py``). Outputs are written atomically, so a
failure or an interruption leaves no file, temp files included. Python warnings print as one line each,
``prfdn: warning: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterable

from prfdn_jax.commands.common import CLIError, clean_message, one_line
from prfdn_jax.extras import MissingExtra
from prfdn_jax.backends import configure_xla_flags

COMMANDS = ("upscale", "eval", "models", "export", "verify", "reparam", "prune", "prepare", "train", "pipeline",
            "bench")
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread (:func:`main`), so that every ``finally`` and every
    :func:`~prfdn_jax.fileio.atomic_write` cleanup runs, as for Ctrl-C."""


def _terminate(signum, frame):
    from prfdn_jax.fileio import record_stop

    exc = Terminated()
    record_stop(exc)  # raised in a gc callback, Python would ignore it: atomic_write and _run check the record
    raise exc


def _unraisable(hook):
    """``sys.unraisablehook`` that keeps quiet about a stop signal's exception swallowed in a gc callback
    (it is recorded: :func:`_terminate`; ``prfdn: terminated`` is the one line the user sees)."""
    def quiet(u):
        if not isinstance(u.exc_value, KeyboardInterrupt):
            hook(u)
    return quiet


def command_module(name: str):
    """The module of command ``name`` (``prfdn_jax.commands.<name>``)."""
    return importlib.import_module(f"prfdn_jax.commands.{name}")


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version

        return dist_version("prfdn-jax")
    except (ImportError, PackageNotFoundError):
        import prfdn_jax

        return getattr(prfdn_jax, "__version__", "unknown")


def build_parser(with_options: Iterable[str] = COMMANDS) -> argparse.ArgumentParser:
    """``prfdn [--version] COMMAND ...``: one subparser per module of :data:`COMMANDS`, with the options
    of the commands in ``with_options`` (:func:`main`: the one being run, so that only the owners of its
    option values are imported)."""
    p = argparse.ArgumentParser(prog="prfdn", description="PRFDN real-time super-resolution in JAX")
    p.add_argument("--version", action="version", version=f"prfdn {version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    with_options = set(with_options)
    for name in COMMANDS:
        module = command_module(name)
        parser = sub.add_parser(name, help=module.HELP)
        if name in with_options:
            module.add_arguments(parser)
        parser.set_defaults(func=module.run)
    return p


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
    return f"prfdn: warning: {clean_message(str(message))}\n"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 1 error, 2 bad command line, 130 interrupted, 143
    terminated)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    configure_xla_flags()  # before JAX starts a backend; the user's XLA_FLAGS win
    command = next((a for a in argv if not a.startswith("-")), None)  # prfdn's own options take no value
    try:
        args = build_parser(with_options=[command]).parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, argparse printed the usage)
        return EXIT_USAGE if isinstance(e.code, str) else int(e.code or 0)
    formatter = warnings.formatwarning
    warnings.formatwarning = _format_warning
    if hasattr(args, "no_compile_cache"):  # a command that compiles for its inputs: keep programs across runs
        from prfdn_jax.throughput import enable_compile_cache

        enable_compile_cache(off=args.no_compile_cache)
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    unraisable, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    try:
        return _run(args)
    finally:
        sys.unraisablehook = unraisable
        warnings.formatwarning = formatter
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def _run(args) -> int:
    from prfdn_jax.fileio import check_stop, record_stop

    try:
        code = args.func(args)
        check_stop()  # a SIGTERM whose exception was swallowed still ends the run as terminated
        return code
    except KeyboardInterrupt as e:
        record_stop(None)
        resume = "; resume with the same --workdir" if args.cmd in ("train", "pipeline") else ""
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"prfdn: {what}{resume}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into one line
        if os.environ.get("PRFDN_DEBUG"):
            raise
        prefix = "error" if isinstance(e, _known_errors()) else f"internal error ({type(e).__name__})"
        text = one_line(e)
        if isinstance(e, MemoryError) or "out of memory" in text.lower():
            hint = "; try --tile PX or a lower --memory-budget" if args.cmd in ("upscale", "eval") else ""
            prefix, text = "error", ("out of memory" if text == "out of memory" else f"out of memory ({text})") + hint
        print(f"prfdn: {prefix}: {text}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
