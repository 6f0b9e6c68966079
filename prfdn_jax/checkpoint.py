"""Model files: flat parameters, our safetensors format, PyTorch ``.pth`` import.

Our model file is a ``.safetensors`` file (no pickle) whose tensors are the flat Flax parameters
(``'stages.0.c1_d.kernel'``: HWIO, stacked layers with a leading branch axis) and whose metadata holds
``{"format": "prfdn-jax", "arch": <Arch JSON>, ...}``. ``load_any`` opens every kind of weights a user has.

Training workdirs (``load_any`` of a folder) are read by :mod:`prfdn_jax.workdir`.
Reading a ``.pth`` needs PyTorch (the ``torch`` extra).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax.fileio import atomic_write, no_such
from prfdn_jax.networks import build_abstract, set_impl
from prfdn_jax.spec import Arch, StateDictError
from prfdn_jax.workdir import load_workdir_model

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


def write_model_file(path: str | os.PathLike, model: nnx.Module, **meta: str) -> Path:
    """Write ``model`` as our safetensors model file to ``path`` as it is (not atomic: :func:`save_model`)."""
    from safetensors.numpy import save_file

    metadata = {"format": FORMAT, "arch": model.arch.to_json(), **{k: str(v) for k, v in meta.items()}}
    save_file({k: np.ascontiguousarray(v) for k, v in flat_params(model).items()}, str(path), metadata)
    return Path(path)


def save_model(path: str | os.PathLike, model: nnx.Module, **meta: str) -> Path:
    """Write ``model`` as our safetensors model file, atomically (:func:`prfdn_jax.fileio.atomic_write`)."""
    with atomic_write(path) as tmp:
        write_model_file(tmp, model, **meta)
    return Path(path)


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
    from prfdn_jax.state_dict import check_tensors

    try:
        check_tensors(flat, f"{path}: ")  # float tensors, finite: nothing loads as a black or white network
    except StateDictError as e:
        raise WeightsError(str(e)) from None
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


def _from_state_dict(path, sd, form: str | None) -> nnx.Module:
    from prfdn_jax.state_dict import arch_and_flat_from_state_dict

    try:
        arch, flat = arch_and_flat_from_state_dict(sd, form)
        return model_from_flat(arch, flat)
    except (StateDictError, WeightsError) as e:
        raise WeightsError(f"{path}: {e}") from None


def load_torch(path: str | os.PathLike, form: str | None = None, notes: list[str] | None = None) -> nnx.Module:
    """A PyTorch ``.pth`` state dict (needs the ``torch`` extra): the released layout, our grouped wide
    export, or a BasicSR-style wrapper (``params_ema`` preferred, ``module.`` prefixes, fp16); the
    architecture is detected from keys and shapes. What was unwrapped or converted goes to ``notes``."""
    from prfdn_jax.state_dict import read_pth_with_notes

    try:
        sd, found = read_pth_with_notes(path)
    except StateDictError as e:
        raise WeightsError(str(e)) from None
    if notes is not None:
        notes.extend(found)
    return _from_state_dict(path, sd, form)


def load_any(path: str | os.PathLike, notes: list[str] | None = None) -> nnx.Module:
    """Open a ``.pth`` state dict, a ``.safetensors`` file (ours, or a state dict of another trainer),
    or a training workdir. Notes on what was converted are appended to ``notes``."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"{p}: {no_such(p)}")
    if p.is_dir():
        return load_workdir_model(p)
    from prfdn_jax.state_dict import sniff

    kind = sniff(p)  # the content decides, not the name (a safetensors file named .bin, a .pth named .safetensors)
    if kind is None and p.suffix not in (".safetensors", ".pth", ".pt"):
        raise WeightsError(f"{p}: not a weights file (neither a PyTorch checkpoint nor a safetensors file)")
    if kind == "safetensors" or (kind is None and p.suffix == ".safetensors"):
        if _has_our_metadata(p):
            return load_model_file(p)
        from prfdn_jax.state_dict import read_foreign_safetensors

        try:
            sd, found = read_foreign_safetensors(p)
        except (StateDictError, ValueError) as e:
            raise WeightsError(f"{p}: {e}" if str(p) not in str(e) else str(e)) from None
        if notes is not None:
            notes.extend(found)
        return _from_state_dict(p, sd, None)
    return load_torch(p, notes=notes)


def _has_our_metadata(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception as e:  # safetensors raises several types for a bad header
        raise WeightsError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
