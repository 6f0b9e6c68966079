"""Model files: flat parameters, our safetensors format, PyTorch ``.pth`` import, training workdirs.

Our model file is a ``.safetensors`` file (no pickle) whose tensors are the flat Flax parameters
(``'stages.0.c1_d.kernel'``: HWIO, stacked layers with a leading branch axis) and whose metadata holds
``{"format": "prfdn-jax", "arch": <Arch JSON>, ...}``. ``load_any`` opens every kind of weights a user has.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax.networks import Arch, build_abstract

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
    return nnx.merge(graphdef, state)


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


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``.pth`` state dict as numpy arrays. ``weights_only=True``: never executes pickled code."""
    import torch

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only unpickling fails in many ways; all mean "not loadable"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: not a loadable PyTorch state dict ({msg})") from None
    for wrap in ("params", "state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrap), dict):
            sd = sd[wrap]
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: not a PyTorch state dict (expected a dict of tensors)")
    return {k.removeprefix("module."): v.detach().float().numpy() for k, v in sd.items()}


def load_torch(path: str | os.PathLike, form: str | None = None) -> nnx.Module:
    from converters.state_dict import StateDictError, arch_from_state_dict, flat_params_from_state_dict

    sd = read_torch_state_dict(path)
    try:
        arch = arch_from_state_dict(sd, form)
        return model_from_flat(arch, flat_params_from_state_dict(sd, arch))
    except (StateDictError, WeightsError) as e:
        raise WeightsError(f"{path}: {e}") from None


def load_any(path: str | os.PathLike) -> nnx.Module:
    """Open a ``.pth`` state dict, our ``.safetensors`` model file, or a training workdir."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"{p}: no such file or directory")
    if p.is_dir():
        from prfdn_jax.train import load_workdir_model

        return load_workdir_model(p)
    with open(p, "rb") as fh:
        head = fh.read(8)
    if p.suffix == ".safetensors" or (len(head) == 8 and int.from_bytes(head, "little") < 100_000_000
                                      and p.suffix not in (".pth", ".pt")):
        return load_model_file(p)
    return load_torch(p)

