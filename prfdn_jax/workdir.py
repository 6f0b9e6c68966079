"""Training workdirs: the layout, the run records, the orbax checkpoints, the lock, reading the network back.

Layout of a workdir ``W`` (names: the constants below)::

    arch.json  config.json            the network trained and the config of the latest run
    runs.jsonl                        one line per run: time, start step, changes, skipped checkpoints, config
    checkpoints/<step>/{model,opt,data[,ema]}  orbax: parameters, optimizer state, data iterator state, EMA
    corrupt_checkpoints/<step>        unreadable checkpoints a resume passed over
    metrics.csv  metrics.png  tb/     the run's metrics (written by :class:`prfdn_jax.runlog.MetricsLog`)
    .lock                             held (``flock``) by the run training in W; holds its PID

Parameter and optimizer trees are stored packed, one flat vector per dtype (:func:`pack`,
:func:`unpack`); ``ema`` (the EMA of the parameters, packed like ``model``) only where the run keeps
one, and checkpoints without it restore too. A checkpoint that does not restore (truncated or garbled
files, a missing item, an empty step folder) is skipped for the newest one that does
(:func:`restore_newest`) and moved to ``corrupt_checkpoints/`` by the run that resumes (:func:`set_aside`).
One run at a time: :func:`workdir_lock` (an OS lock, released when the process ends, even by SIGKILL).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax.fileio import atomic_write
from prfdn_jax.networks import build_abstract
from prfdn_jax.spec import Arch

ARCH, CONFIG, RUNS = "arch.json", "config.json", "runs.jsonl"
CHECKPOINTS, CORRUPT_DIR = "checkpoints", "corrupt_checkpoints"
METRICS, METRICS_PLOT, TB_DIR = "metrics.csv", "metrics.png", "tb"
LOCK = ".lock"
WORKDIR_ITEMS = ("model", "opt", "data")  # parameters, optimizer state, data iterator state (every checkpoint)
EMA_ITEM = "ema"  # the EMA of the parameters (packed as "model"): only in checkpoints of runs with ema_decay > 0


class WorkdirError(ValueError):
    """A workdir that cannot be read or used; the message is one line naming it."""


class WorkdirBusy(WorkdirError):
    """Another run holds the workdir's lock."""


# ----------------------------------------------------------------------------- the lock
@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, enabled: bool = True):
    """Hold ``W/.lock`` exclusively (``flock``, with this PID in it) for the block; removed on exit.

    :class:`WorkdirBusy` at once, touching nothing, when another process holds it. The OS drops the
    lock when the holder dies (also by SIGKILL); the stale file it leaves is taken over.
    """
    if not enabled:
        yield
        return
    import fcntl

    path = Path(workdir) / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise WorkdirBusy(f"{workdir}: the workdir is in use by another run"
                              f"{f' (PID {pid})' if pid.isdigit() else ''}") from None
        try:  # the file may have been removed (or replaced) by the holder we waited for: lock the one there now
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still held: a process that opened it before re-checks the inode
        os.close(fd)


# ----------------------------------------------------------------------------- the records
def previous_config(workdir: Path) -> dict | None:
    """The config of the workdir's latest run (``config.json``, else the last line of ``runs.jsonl``)."""
    try:
        d = json.loads((workdir / CONFIG).read_text())
        if isinstance(d, dict):
            return d
    except (OSError, ValueError):
        pass
    try:
        lines = (workdir / RUNS).read_text().splitlines()
        return json.loads(lines[-1])["config"] if lines else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def record_run(workdir: Path, *, arch_json: str, config: dict, start_step: int, changes: dict,
               skipped: list | None = None, resolved: dict | None = None) -> None:
    """Write ``arch.json`` and ``config.json`` (the latest run's) and append this run to ``runs.jsonl``.

    ``resolved``: what the config left to the machine, as this run chose it (apply path, compute dtype,
    backend, devices)."""
    _write_text(workdir / ARCH, arch_json)
    _write_text(workdir / CONFIG, json.dumps(config, indent=1, default=str))
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "start_step": start_step,
             "changes": {k: {"was": o, "now": n} for k, (o, n) in changes.items()}}
    if skipped:
        entry["skipped_checkpoints"] = [{"step": s, "why": why} for s, why in skipped]
    if resolved:
        entry["resolved"] = resolved
    entry["config"] = config
    with open(workdir / RUNS, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def read_workdir_arch(path: str | os.PathLike) -> Arch:
    p = Path(path)
    f = p / ARCH
    if not f.is_file():
        raise WorkdirError(f"{p}: not a training workdir (no {ARCH})")
    try:
        return Arch.from_json(f.read_text())
    except (ValueError, KeyError, TypeError) as e:
        raise WorkdirError(f"{f}: bad architecture file ({e})") from None


def tidy(workdir: Path, created: bool) -> None:
    """After a run that saved nothing: no empty ``checkpoints/``, nor an empty workdir this run created."""
    for d in [workdir / CHECKPOINTS] + ([workdir] if created else []):
        with contextlib.suppress(OSError):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


# ----------------------------------------------------------------------------- packed trees
def host(x) -> np.ndarray:
    """A (possibly multi-process, replicated) array as a numpy array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))  # replicated: every process holds all of it
    return np.asarray(x)


def host_tree(tree):
    return jax.tree.map(host, tree)


def pack(tree) -> dict[str, np.ndarray]:
    """A pytree as one flat host vector per dtype (``{'float32': (n,), 'int32': (m,)}``), leaf order.

    Checkpoints hold packed trees: orbax's cost is per array, and these nets have hundreds of tiny ones.
    """
    groups: dict[str, list[np.ndarray]] = {}
    for leaf in jax.tree.leaves(tree):
        a = host(leaf)
        groups.setdefault(a.dtype.name, []).append(a.ravel())
    return {k: np.concatenate(v) for k, v in groups.items()}


def unpack(packed: dict[str, np.ndarray], template):
    """Inverse of :func:`pack`: arrays shaped as ``template``'s leaves (arrays or ShapeDtypeStructs)."""
    leaves, treedef = jax.tree.flatten(template)
    offsets = dict.fromkeys(packed, 0)
    out = []
    for t in leaves:
        name, n = np.dtype(t.dtype).name, int(np.prod(t.shape))
        if name not in packed or offsets[name] + n > packed[name].size:
            raise WorkdirError(f"checkpoint does not fit the network (too few {name} values)")
        out.append(np.asarray(packed[name][offsets[name]:offsets[name] + n]).reshape(t.shape))
        offsets[name] += n
    if any(offsets[k] != packed[k].size for k in packed):
        raise WorkdirError("checkpoint does not fit the network (values left over)")
    return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- orbax checkpoints
@contextlib.contextmanager
def quiet_orbax():
    """Silence orbax's absl log lines for a while (kept: CRITICAL)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


_DISK_FULL_TEXT = ("No space left on device", "os_error_code='28'", "Disk quota exceeded")


def is_disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` or an exception it was raised from (or during) is a full disk: an ``OSError`` ENOSPC /
    EDQUOT, or tensorstore's ``RESOURCE_EXHAUSTED ... No space left on device`` that orbax raises."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        if any(s in str(e) for s in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def disk_full_in_one_line(workdir: str | os.PathLike):
    """Within the block orbax's own log lines are silenced (its background save thread logs every failure
    with a traceback; the failure reaches the caller anyway) and a full disk, from a checkpoint or a run
    log, becomes one :class:`WorkdirError` line naming ``workdir``, its free space and about what one
    checkpoint takes."""
    try:
        with quiet_orbax():
            yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise WorkdirError(_disk_full_text(Path(workdir))) from None


def _disk_full_text(workdir: Path) -> str:
    def size(n: float) -> str:
        return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"

    try:
        free = f"{size(shutil.disk_usage(workdir).free)} free"
    except OSError:
        free = "free space unknown"
    steps = sorted((p for p in (workdir / CHECKPOINTS).glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    used = sum(f.stat().st_size for f in steps[-1].rglob("*") if f.is_file()) if steps else 0
    need = f"; a checkpoint takes about {size(used)}" if used else ""
    return f"{workdir}: no space left on device ({free}{need}): training stopped; free some space and resume"


def workdir_manager(workdir: str | os.PathLike, keep: int = 3):
    """The orbax ``CheckpointManager`` of ``workdir/checkpoints`` (created if missing)."""
    import orbax.checkpoint as ocp

    with quiet_orbax():  # a broken step makes orbax log errors of its own; restore_newest says it in one line
        return ocp.CheckpointManager(Path(workdir).resolve() / CHECKPOINTS,
                                     options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
                                     item_names=WORKDIR_ITEMS + (EMA_ITEM,))


def step_has_item(mngr, step: int, item: str) -> bool:
    """Whether checkpoint ``step`` of ``mngr`` holds ``item`` (e.g. :data:`EMA_ITEM`)."""
    return (Path(str(mngr.directory)) / str(step) / item).is_dir()


def save_checkpoint(mngr, step: int, params, opt_state, ema, data) -> None:
    """Checkpoint ``step`` (asynchronous): packed ``params``, ``opt_state``, ``ema`` (unless None) and the
    state of the data iterator ``data``."""
    import grain
    import orbax.checkpoint as ocp

    items = {"model": ocp.args.StandardSave(pack(params)), "opt": ocp.args.StandardSave(pack(opt_state)),
             "data": grain.checkpoint.CheckpointSave(data)}
    if ema is not None:
        items[EMA_ITEM] = ocp.args.StandardSave(pack(ema))
    mngr.save(step, args=ocp.args.Composite(**items))


def restore_checkpoint(workdir, mngr, data, params, opt_template, use_ema: bool):
    """``(step, (params, opt_state, ema), skipped)`` of the newest readable checkpoint (host arrays shaped
    as the templates ``params``, ``opt_template``); restores the data iterator ``data`` too.

    ``ema`` is None unless ``use_ema`` and the checkpoint holds one (older checkpoints do not).
    """
    import grain
    import orbax.checkpoint as ocp

    def restore(m, step):
        with_ema = use_ema and step_has_item(m, step, EMA_ITEM)
        items = {"model": ocp.args.StandardRestore(), "opt": ocp.args.StandardRestore(),
                 "data": grain.checkpoint.CheckpointRestore(data)}
        if with_ema:
            items[EMA_ITEM] = ocp.args.StandardRestore()
        r = m.restore(step, args=ocp.args.Composite(**items))
        ema = unpack(r[EMA_ITEM], params) if with_ema else None
        return unpack(r["model"], params), unpack(r["opt"], opt_template), ema

    return restore_newest(workdir, mngr, restore)


_STATUS = {"OUT_OF_RANGE": "truncated file", "DATA_LOSS": "corrupt file", "FAILED_PRECONDITION": "corrupt file"}


def _step_problem(step_dir: Path, items) -> str | None:
    """What is visibly wrong with a step folder (None: nothing seen without restoring it)."""
    if not step_dir.is_dir():
        return "no step folder"
    if not any(step_dir.iterdir()):
        return "empty step folder"
    for item in items:
        if not (step_dir / item).is_dir():
            return f"missing item {item}/"
        for f in sorted((step_dir / item).rglob("*")):
            if f.is_file() and (f.name == "_METADATA" or f.suffix == ".json"):
                try:
                    json.loads(f.read_bytes())
                except ValueError:
                    return f"corrupt file {f.relative_to(step_dir)}: not valid JSON"
    return None


def _restore_problem(e: Exception, step_dir: Path) -> str:
    """A restore error of ``step_dir`` in a few words (tensorstore's status and the file or item)."""
    msg = str(e)
    if isinstance(e, WorkdirError):
        return msg
    head = msg.split(":", 1)[0]
    if head in _STATUS:
        where = ""
        for f in reversed(re.findall(r'local file "([^"]+)"', msg)):
            with contextlib.suppress(ValueError):
                rel = Path(f).resolve().relative_to(step_dir.resolve())
                where = f" {rel}" if f and not f.endswith("/") else f" in {rel}/"
                break
        return _STATUS[head] + where
    first = msg.splitlines()[0] if msg else ""
    return f"{type(e).__name__}: {first[:120]}"


def unreadable_text(skipped: list[tuple[int, str]]) -> str:
    """``checkpoint 6 is unreadable (why)`` / ``checkpoints 8, 6 are unreadable (8: why; 6: why)``."""
    if len(skipped) == 1:
        return f"checkpoint {skipped[0][0]} is unreadable ({skipped[0][1]})"
    return (f"checkpoints {', '.join(str(s) for s, _ in skipped)} are unreadable "
            f"({'; '.join(f'{s}: {why}' for s, why in skipped)})")


def restore_newest(workdir, mngr, restore, items=WORKDIR_ITEMS, steps=None):
    """``(step, restore(mngr, step), skipped)`` of the newest checkpoint that restores.

    ``steps``: the candidates (default: every finished step). ``skipped``: ``[(step, why)]`` of the
    newer ones that did not restore. ``(None, None, [])`` without any checkpoint; :class:`WorkdirError`
    naming the workdir when none restores.
    """
    root = Path(str(mngr.directory))
    skipped: list[tuple[int, str]] = []
    for step in sorted(mngr.all_steps() if steps is None else steps, reverse=True):
        why = _step_problem(root / str(step), items)
        if why is None:
            try:
                with quiet_orbax():
                    return step, restore(mngr, step), skipped
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad files
                why = _restore_problem(e, root / str(step))
        skipped.append((step, why))
    if skipped:
        raise WorkdirError(f"{workdir}: no readable checkpoint: {unreadable_text(skipped)}")
    return None, None, []


def set_aside(workdir: str | os.PathLike, steps) -> list[Path]:
    """Move the step folders ``steps`` of ``workdir/checkpoints`` to ``workdir/corrupt_checkpoints``."""
    root, dest_root = Path(workdir) / CHECKPOINTS, Path(workdir) / CORRUPT_DIR
    out = []
    for step in steps:
        dest, n = dest_root / str(step), 1
        while dest.exists():
            dest, n = dest_root / f"{step}.{n}", n + 1
        dest_root.mkdir(exist_ok=True)
        shutil.move(str(root / str(step)), str(dest))
        out.append(dest)
    return out


def set_aside_skipped(workdir: Path, mngr, skipped, start: int, keep: int, is_main: bool):
    """Move the skipped (unreadable) checkpoints out of ``checkpoints/`` (the run writes those steps again),
    saying so in one line; returns a new manager (every process waits for the move)."""
    mngr.close()
    if is_main:
        moved = set_aside(workdir, [s for s, _ in skipped])
        where = moved[0] if len(moved) == 1 else workdir / CORRUPT_DIR
        print(f"warning: {workdir}: {unreadable_text(skipped)}, moved to {where}; resuming from step {start}",
              file=sys.stderr, flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("prfdn_set_aside")
    return workdir_manager(workdir, keep)


# ----------------------------------------------------------------------------- reading the network
def load_workdir_model(path: str | os.PathLike, step: int | None = None, *, ema: bool = True) -> nnx.Module:
    """The network of a training workdir with the parameters of its latest (or ``step``) checkpoint.

    ``ema`` (default): the checkpoint's EMA of the parameters where it has one (a run with
    ``ema_decay > 0``; what training validates and returns), else its parameters. An unreadable latest
    checkpoint is skipped (one-line warning on stderr) for the newest one that reads.
    """
    import orbax.checkpoint as ocp

    p = Path(path)
    arch = read_workdir_arch(p)
    if not (p / CHECKPOINTS).is_dir():
        raise WorkdirError(f"{p}: training workdir without checkpoints")
    graphdef, params, rest = nnx.split(build_abstract(arch), nnx.Param, ...)

    def restore(mngr, s):
        item = EMA_ITEM if ema and step_has_item(mngr, s, EMA_ITEM) else "model"
        return unpack(mngr.restore(s, args=ocp.args.Composite(**{item: ocp.args.StandardRestore()}))[item], params)

    mngr = workdir_manager(p)
    try:
        have = mngr.all_steps()
        if step is not None and step not in have:
            have_text = ", ".join(map(str, sorted(have))) or "none"
            raise WorkdirError(f"{p}: no checkpoint at step {step} (have: {have_text})")
        found, params, skipped = restore_newest(p, mngr, restore, ("model",), None if step is None else [step])
    finally:
        mngr.close()
    if found is None:
        raise WorkdirError(f"{p}: training workdir without a finished checkpoint")
    if skipped:
        print(f"warning: {p}: {unreadable_text(skipped)}; using step {found}", file=sys.stderr, flush=True)
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params), rest)
