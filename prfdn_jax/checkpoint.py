"""Model files: flat parameters, our safetensors format, PyTorch ``.pth`` import, training workdirs.

Our model file is a ``.safetensors`` file (no pickle) whose tensors are the flat Flax parameters
(``'stages.0.c1_d.kernel'``: HWIO, stacked layers with a leading branch axis) and whose metadata holds
``{"format": "prfdn-jax", "arch": <Arch JSON>, ...}``. ``load_any`` opens every kind of weights a user has.

A training workdir holds ``arch.json`` and orbax checkpoints ``checkpoints/<step>/{model,opt,data[,ema]}``
(:func:`workdir_manager`; ``ema``: the EMA of the parameters, when the run keeps one; checkpoints
without it restore too); parameter and optimizer trees are stored packed, one flat vector per dtype
(:func:`pack`, :func:`unpack`). A checkpoint that does not restore (truncated or garbled files, a
missing item, an empty step folder) is skipped for the newest one that does (:func:`restore_newest`).
Reading a ``.pth`` needs PyTorch (the ``torch`` extra).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax.extras import require_torch
from prfdn_jax.networks import build_abstract, set_impl
from prfdn_jax.spec import Arch, StateDictError

FORMAT = "prfdn-jax"


class WeightsError(ValueError):
    """Weights that cannot be loaded; the message is one line and names the file or key."""


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
    """``{'a.b.kernel': np.ndarray}`` of every ``nnx.Param`` of ``model``."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        out[".".join(str(p) for p in path)] = np.asarray(var[...])
    return out


def _check_flat(have: Mapping[str, tuple], flat: Mapping[str, np.ndarray]) -> None:
    for key, shape in have.items():
        if key not in flat:
            raise WeightsError(f"missing parameter {key!r} (expected shape {shape})")
        if tuple(np.shape(flat[key])) != shape:
            raise WeightsError(f"shape mismatch for {key!r}: file {tuple(np.shape(flat[key]))}, model {shape}")
    for key in flat:
        if key not in have:
            raise WeightsError(f"unexpected parameter {key!r} (shape {tuple(np.shape(flat[key]))})")


def _nest(flat: Mapping[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        *parents, leaf = [int(p) if p.isdigit() else p for p in key.split(".")]
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = jnp.asarray(v, dtype=jnp.float32)
    return out


def set_flat_params(model: nnx.Module, flat: Mapping[str, np.ndarray]) -> nnx.Module:
    """Load flat parameters into ``model`` in place, after a strict key/shape check."""
    state = nnx.state(model, nnx.Param)
    _check_flat({".".join(str(p) for p in path): tuple(var.get_value().shape)
                 for path, var in nnx.to_flat_state(state)}, flat)
    nnx.replace_by_pure_dict(state, _nest(flat))
    nnx.update(model, state)
    return model


@functools.lru_cache(maxsize=32)
def _abstract(arch: Arch):
    """(graphdef, abstract param state, {flat key: shape}) of ``arch``: traced once per architecture."""
    graphdef, state = nnx.split(build_abstract(arch))
    shapes = {".".join(str(p) for p in path): tuple(var.get_value().shape) for path, var in nnx.to_flat_state(state)}
    return graphdef, state, shapes


def model_from_flat(arch: Arch, flat: Mapping[str, np.ndarray]) -> nnx.Module:
    """A network of ``arch`` holding ``flat`` (strictly checked: names and shapes)."""
    graphdef, abstract, shapes = _abstract(arch)
    _check_flat(shapes, flat)
    state = jax.tree.map(lambda x: x, abstract)  # fresh variables; the cached ones stay abstract
    nnx.replace_by_pure_dict(state, _nest(flat))
    return set_impl(nnx.merge(graphdef, state), None)  # the default path resolved now, not the cached one's


def atomic_path(path: Path):
    """A temp file beside ``path``; caller writes it then ``os.replace``s it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _publish(tmp: Path, path: Path) -> None:
    """Give ``tmp`` ordinary permissions (mkstemp makes 0600) and rename it onto ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def save_model(path: str | os.PathLike, model: nnx.Module, **meta: str) -> Path:
    """Write ``model`` as our safetensors model file (atomically)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = atomic_path(path)
    try:
        metadata = {"format": FORMAT, "arch": model.arch.to_json(), **{k: str(v) for k, v in meta.items()}}
        save_file({k: np.ascontiguousarray(v) for k, v in flat_params(model).items()}, str(tmp), metadata)
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_model_file(path: str | os.PathLike) -> tuple[Arch, dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a bad header
        raise WeightsError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if meta.get("format") != FORMAT or "arch" not in meta:
        raise WeightsError(f"{path}: a safetensors file without prfdn-jax metadata")
    try:
        arch = Arch.from_json(meta["arch"])
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{path}: bad architecture metadata ({e})") from None
    return arch, flat, meta


def load_model_file(path: str | os.PathLike) -> nnx.Module:
    arch, flat, _ = read_model_file(path)
    try:
        return model_from_flat(arch, flat)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None


def _from_state_dict(path, sd, form: str | None, notes: list[str] | None) -> nnx.Module:
    from prfdn_jax.foreign import arch_and_flat_from_state_dict

    try:
        arch, flat = arch_and_flat_from_state_dict(sd, form)
        return model_from_flat(arch, flat)
    except (StateDictError, WeightsError) as e:
        raise WeightsError(f"{path}: {e}") from None


def load_torch(path: str | os.PathLike, form: str | None = None, notes: list[str] | None = None) -> nnx.Module:
    """A PyTorch ``.pth`` state dict (needs the ``torch`` extra): the released layout, our grouped wide
    export, or a BasicSR-style wrapper (``params_ema`` preferred, ``module.`` prefixes, fp16); the
    architecture is detected from keys and shapes. What was unwrapped or converted goes to ``notes``."""
    require_torch(f"reading {path} (a PyTorch checkpoint)")
    from converters.state_dict import read_pth_with_notes

    try:
        sd, found = read_pth_with_notes(path)
    except StateDictError as e:
        raise WeightsError(str(e)) from None
    if notes is not None:
        notes.extend(found)
    return _from_state_dict(path, sd, form, notes)


def load_any(path: str | os.PathLike, notes: list[str] | None = None) -> nnx.Module:
    """Open a ``.pth`` state dict, a ``.safetensors`` file (ours, or a state dict of another trainer),
    or a training workdir. Notes on what was converted are appended to ``notes``."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"{p}: no such file or directory")
    if p.is_dir():
        return load_workdir_model(p)
    with open(p, "rb") as fh:
        head = fh.read(8)
    if p.suffix == ".safetensors" or (len(head) == 8 and int.from_bytes(head, "little") < 100_000_000
                                      and p.suffix not in (".pth", ".pt")):
        if _has_our_metadata(p):
            return load_model_file(p)
        from prfdn_jax.foreign import read_foreign_safetensors

        try:
            sd, found = read_foreign_safetensors(p)
        except (StateDictError, ValueError) as e:
            raise WeightsError(f"{p}: {e}" if str(p) not in str(e) else str(e)) from None
        if notes is not None:
            notes.extend(found)
        return _from_state_dict(p, sd, None, notes)
    return load_torch(p, notes=notes)


def _has_our_metadata(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception as e:  # safetensors raises several types for a bad header
        raise WeightsError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


# ----------------------------------------------------------------------------- training workdirs
WORKDIR_ITEMS = ("model", "opt", "data")  # parameters, optimizer state, data iterator state (every checkpoint)
EMA_ITEM = "ema"  # the EMA of the parameters (packed as "model"): only in checkpoints of runs with ema_decay > 0


def workdir_manager(workdir: str | os.PathLike, keep: int = 3):
    """The orbax ``CheckpointManager`` of ``workdir/checkpoints`` (created if missing)."""
    import orbax.checkpoint as ocp

    with quiet_orbax():  # a broken step makes orbax log errors of its own; restore_newest says it in one line
        return ocp.CheckpointManager(Path(workdir).resolve() / "checkpoints",
                                     options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
                                     item_names=WORKDIR_ITEMS + (EMA_ITEM,))


def step_has_item(mngr, step: int, item: str) -> bool:
    """Whether checkpoint ``step`` of ``mngr`` holds ``item`` (e.g. :data:`EMA_ITEM`)."""
    return (Path(str(mngr.directory)) / str(step) / item).is_dir()


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


CORRUPT_DIR = "corrupt_checkpoints"  # where run() moves the unreadable checkpoints it skipped
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
    if isinstance(e, WeightsError):
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
    newer ones that did not restore. ``(None, None, [])`` without any checkpoint; :class:`WeightsError`
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
        raise WeightsError(f"{workdir}: no readable checkpoint: {unreadable_text(skipped)}")
    return None, None, []


def set_aside(workdir: str | os.PathLike, steps) -> list[Path]:
    """Move the step folders ``steps`` of ``workdir/checkpoints`` to ``workdir/corrupt_checkpoints``."""
    root, dest_root = Path(workdir) / "checkpoints", Path(workdir) / CORRUPT_DIR
    out = []
    for step in steps:
        dest, n = dest_root / str(step), 1
        while dest.exists():
            dest, n = dest_root / f"{step}.{n}", n + 1
        dest_root.mkdir(exist_ok=True)
        shutil.move(str(root / str(step)), str(dest))
        out.append(dest)
    return out


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
            raise WeightsError(f"checkpoint does not fit the network (too few {name} values)")
        out.append(np.asarray(packed[name][offsets[name]:offsets[name] + n]).reshape(t.shape))
        offsets[name] += n
    if any(offsets[k] != packed[k].size for k in packed):
        raise WeightsError("checkpoint does not fit the network (values left over)")
    return jax.tree.unflatten(treedef, out)


def read_workdir_arch(path: str | os.PathLike) -> Arch:
    p = Path(path)
    f = p / "arch.json"
    if not f.is_file():
        raise WeightsError(f"{p}: not a training workdir (no arch.json)")
    try:
        return Arch.from_json(f.read_text())
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{f}: bad architecture file ({e})") from None


def load_workdir_model(path: str | os.PathLike, step: int | None = None, *, ema: bool = True) -> nnx.Module:
    """The network of a training workdir with the parameters of its latest (or ``step``) checkpoint.

    ``ema`` (default): the checkpoint's EMA of the parameters where it has one (a run with
    ``ema_decay > 0``; what training validates and returns), else its parameters. An unreadable latest
    checkpoint is skipped (one-line warning on stderr) for the newest one that reads.
    """
    import orbax.checkpoint as ocp

    p = Path(path)
    arch = read_workdir_arch(p)
    if not (p / "checkpoints").is_dir():
        raise WeightsError(f"{p}: training workdir without checkpoints")
    graphdef, params, rest = nnx.split(build_abstract(arch), nnx.Param, ...)

    def restore(mngr, s):
        item = EMA_ITEM if ema and step_has_item(mngr, s, EMA_ITEM) else "model"
        return unpack(mngr.restore(s, args=ocp.args.Composite(**{item: ocp.args.StandardRestore()}))[item], params)

    mngr = workdir_manager(p)
    try:
        have = mngr.all_steps()
        if step is not None and step not in have:
            have_text = ", ".join(map(str, sorted(have))) or "none"
            raise WeightsError(f"{p}: no checkpoint at step {step} (have: {have_text})")
        found, params, skipped = restore_newest(p, mngr, restore, ("model",), None if step is None else [step])
    finally:
        mngr.close()
    if found is None:
        raise WeightsError(f"{p}: training workdir without a finished checkpoint")
    if skipped:
        print(f"warning: {p}: {unreadable_text(skipped)}; using step {found}", file=sys.stderr, flush=True)
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params), rest)
