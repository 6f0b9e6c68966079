"""State dicts as numpy: reading them, and converting them to and from flat prfdn-jax parameters.

The one place where weights change layout (the key table itself is the spec's,
:func:`prfdn_jax.spec.conv_table`). A state dict here is a mapping of key -> array (numpy arrays, or
anything with ``.shape``); flat parameters are ``{'stages.0.c1_d.kernel': HWIO array, ...}`` (stacked
layers with a leading branch axis). PyTorch OIHW <-> Flax HWIO is ``transpose(2, 3, 1, 0)``, biases are
unchanged: pure transposes and stacking, so every round trip is bit-exact. Two layouts:

* the released key names (``fea_conv1234``, ``B1234.c1_d``, ...): :func:`flat_params_from_state_dict`,
  :func:`state_dict_from_flat_params`;
* the grouped-conv layout of the PyTorch ``WideNet`` (``prfdn export --format torch`` of a wide
  network: ``fea.<b>``, ``srfdb.*``, ``stages.<d>.*``, ``c``, ``LR_conv``, ``upsampler.0``):
  :func:`wide_arch_from_state_dict`, :func:`flat_from_wide_state_dict`, :func:`wide_state_dict`.

Reading returns the state dict plus *notes*, one line per conversion:

* wrappers ``{'params_ema': sd, 'params': sd}`` (BasicSR: the EMA weights are preferred and a note
  says which was used), ``{'state_dict': sd}``, ``{'model': sd}``, nested in any order;
* DataParallel / DDP ``module.`` prefixes (stripped);
* float16 / bfloat16 / float64 tensors (converted to float32); integer or bool tensors, and tensors holding
  NaN or Inf, are refused (:func:`check_tensors`: one line naming the file and the tensor);
* ``.safetensors`` files WITHOUT our prfdn-jax metadata (:func:`read_foreign_safetensors`);
* ``.pth`` files (:func:`read_pth_with_notes`: the one function that needs torch, reached through
  :func:`prfdn_jax.extras.require_torch`, with ``weights_only=True``).

:func:`arch_and_flat_from_state_dict` (architecture detection) turns either layout into ``(Arch, flat
parameters)`` for :func:`prfdn_jax.checkpoint.model_from_flat`; an architecture we do not know raises
one :class:`~prfdn_jax.spec.StateDictError` line naming the first keys that did not match.
Numpy, safetensors and the spec: no jax, and torch only inside :func:`read_pth_with_notes`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping

import numpy as np

from prfdn_jax.extras import require_torch
from prfdn_jax.spec import (LAYOUTS, Arch, StateDictError, arch_from_state_dict, c5_columns, check_state_dict,
                            conv_table, groupcat_perm, is_stacked, scale_from_upsampler, width_errors)

__all__ = ["WRAPPERS", "StateDictError", "arch_and_flat_from_state_dict", "as_float32", "check_tensors", "sniff",
           "flat_from_wide_state_dict",
           "flat_params_from_state_dict", "is_wide_state_dict", "read_foreign_safetensors", "read_pth",
           "read_pth_with_notes", "state_dict_from_flat_params", "unmatched_keys", "unwrap_state_dict",
           "wide_arch_from_state_dict", "wide_state_dict"]

WRAPPERS = ("params_ema", "params", "state_dict", "model")  # preference order when several are present
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")  # what a weight may be stored as
_MAX_NAMED = 3  # keys named in an "unknown architecture" message

_BLOCK = r"(?:c\d+_[dr]|c4|c5|cat_p|esa\.(?:conv1|conv_f|conv_max|conv2|conv3|conv3_|conv4))"
_KNOWN_KEY = re.compile(
    r"^(?:fea_conv\d*|fea\.\d+|(?:B2S\d+|B\d+|srfdb|stages\.\d+)\." + _BLOCK +
    r"|c|c\.0|LR_conv|upsampler\.0|split|split_left|split_right|cat_p)\.(?:weight|bias)$")


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def unwrap_state_dict(obj, where: str = "") -> tuple[dict, list[str]]:
    """``(state dict, notes)`` of a loaded checkpoint object: wrappers unwrapped, ``module.`` stripped.

    Several wrappers at one level (BasicSR saves ``params`` and ``params_ema``): the first of
    :data:`WRAPPERS` wins and a note names it. Values are left as they are (see :func:`as_float32`).
    Raises :class:`StateDictError` (naming ``where``) if the result is not a non-empty dict of arrays.
    """
    notes: list[str] = []
    sd = obj
    while isinstance(sd, Mapping):
        found = [k for k in WRAPPERS if isinstance(sd.get(k), Mapping)]
        if not found:
            break
        key = found[0]
        if len(found) > 1 or key == "params_ema":
            others = [k for k in sd if k != key]
            notes.append(f"using the {key!r} weights" + (f" (also in the file: {', '.join(map(repr, others))})"
                                                          if others else ""))
        sd = sd[key]
    if not isinstance(sd, Mapping) or not sd or not all(_is_array(v) for v in sd.values()):
        raise StateDictError(f"{where}not a PyTorch state dict (expected a dict of tensors)")
    sd = dict(sd)
    prefixed = [k for k in sd if k.startswith("module.")]
    if prefixed:
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        notes.append(f"stripped the DataParallel 'module.' prefix from {len(prefixed)} keys")
    return sd, notes


def as_float32(sd: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every array as float32 numpy; one note per source dtype that was converted (e.g. float16)."""
    out, converted = {}, Counter()
    for k, v in sd.items():
        a = np.asarray(v)
        if a.dtype != np.float32:
            converted[str(a.dtype)] += 1
            a = a.astype(np.float32)
        out[k] = a
    return out, _dtype_notes(converted)


def check_tensors(sd: Mapping[str, object], where: str = "", dtypes: Mapping[str, str] | None = None) -> None:
    """Raise :class:`StateDictError` (one line: ``where``, then the tensor) for a tensor that is not floating
    point (``dtypes``: its dtype name, default the array's) or holds NaN / Inf (checked as float32, so a
    float64 value beyond float32's range counts as Inf). Integer, bool and quantized tensors would be
    converted to plausible-looking wrong weights; non-finite ones give a black or white image."""
    names = dtypes if dtypes is not None else {k: str(np.asarray(v).dtype) for k, v in sd.items()}
    for k, dt in names.items():
        if dt not in FLOAT_DTYPES:
            raise StateDictError(f"{where}tensor {k!r} is {dt}, not floating point (prfdn reads float weights; "
                                 "integer, bool or quantized tensors are not supported)")
    for k, v in sd.items():
        with np.errstate(over="ignore"):
            a = np.asarray(v, np.float32)
        if not np.isfinite(a).all():
            counts = ((int(np.isnan(a).sum()), "NaN"), (int(np.isinf(a).sum()), "infinite"))
            what = " and ".join(f"{n} {kind} value{'s' if n > 1 else ''}" for n, kind in counts if n)
            raise StateDictError(f"{where}tensor {k!r} holds {what}; weights must be finite")


def _dtype_notes(converted: Mapping[str, int]) -> list[str]:
    return [f"converted {n} {dt} tensor{'s' if n > 1 else ''} to float32" for dt, n in sorted(converted.items())]


def sniff(path: str | os.PathLike) -> str | None:
    """What the content of ``path`` is, whatever its name: ``'safetensors'`` (an 8-byte header length, then
    the JSON header's ``{``), ``'torch'`` (``torch.save``'s zip archive, or a legacy pickle), or None."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    return None


def read_foreign_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str]]:
    """A ``.safetensors`` state dict from another trainer (no prfdn-jax metadata): ``(float32 sd, notes)``.

    Keys under a wrapper prefix (``params_ema.``, ``params.`` ...) are unwrapped as the dict wrappers
    of a ``.pth`` would be. Raises :class:`StateDictError` (one line) for an unreadable file.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad header or dtype
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StateDictError(f"{path}: not a readable safetensors file ({msg})") from None
    nested: dict = {}
    for k, v in sd.items():
        head, dot, rest = k.partition(".")
        if dot and head in WRAPPERS:
            nested.setdefault(head, {})[rest] = v
        else:
            nested[k] = v
    sd, notes = unwrap_state_dict(nested, f"{path}: ")
    check_tensors(sd, f"{path}: ")
    sd, more = as_float32(sd)
    return sd, notes + more


def read_pth_with_notes(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str]]:
    """A ``.pth`` state dict as float32 numpy arrays, and notes on what was unwrapped or converted.

    Needs PyTorch (:class:`~prfdn_jax.extras.MissingExtra`, naming the file, without it).
    ``weights_only=True``: never executes pickled code. Wrappers and ``module.`` prefixes as
    :func:`unwrap_state_dict`; float16 / bfloat16 / float64 tensors become float32 (one note each).
    Raises :class:`StateDictError` (one line, naming the file) if the file is not a state dict.
    """
    torch = require_torch(f"reading {path} (a PyTorch checkpoint)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only unpickling fails in many ways; all mean "not loadable"
        raise StateDictError(f"{path}: not a loadable PyTorch state dict ({_why(e)})") from None
    sd, notes = unwrap_state_dict(obj, f"{path}: ")
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise StateDictError(f"{path}: not a PyTorch state dict (expected a dict of tensors)")
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in sd.items()}
    check_tensors({}, f"{path}: ", dtypes)  # before the conversion, which would turn int8 / bool into floats
    converted = Counter(dt for dt in dtypes.values() if dt != "float32")
    sd = {k: v.detach().float().numpy() for k, v in sd.items()}  # bfloat16 has no numpy dtype: via float32
    check_tensors(sd, f"{path}: ")
    return sd, notes + _dtype_notes(converted)


def _why(e: BaseException) -> str:
    """A one-line reason why ``torch.load(weights_only=True)`` refused a file."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    if "Weights only load failed" in text or "Unsupported global" in text:
        return ("it holds pickled objects other than tensors, which prfdn never runs; re-save it as a plain "
                "state dict: torch.save(model.state_dict(), path)")
    if isinstance(e, EOFError):
        return "truncated or empty file"
    first = text.splitlines()[0] if text else ""
    if not first or first.strip("'\"").isdigit():
        return "corrupt or truncated file"
    return first


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``.pth`` state dict as float32 numpy arrays (:func:`read_pth_with_notes` without the notes)."""
    return read_pth_with_notes(path)[0]


# ----------------------------------------------------------------------------- released layout
def _hwio(w) -> np.ndarray:  # new, writable arrays throughout (torch.from_numpy warns on read-only ones)
    return np.array(np.asarray(w, np.float32).transpose(2, 3, 1, 0), order="C")


def _oihw(k) -> np.ndarray:
    return np.array(np.asarray(k, np.float32).transpose(3, 2, 0, 1), order="C")


def flat_params_from_state_dict(sd: Mapping[str, np.ndarray], arch: Arch) -> dict[str, np.ndarray]:
    """Released-key state dict -> flat prfdn-jax parameters of ``arch`` (float32), after
    :func:`~prfdn_jax.spec.check_state_dict` (a :class:`StateDictError` naming the first bad key)."""
    check_state_dict(sd, arch)
    flat = {}
    for name, prefixes in conv_table(arch):
        ks = [_hwio(sd[p + ".weight"]) for p in prefixes]
        bs = [np.asarray(sd[p + ".bias"], np.float32) for p in prefixes]
        stacked = is_stacked(arch, name)
        flat[name + ".kernel"] = np.stack(ks) if stacked else ks[0]
        flat[name + ".bias"] = np.stack(bs) if stacked else bs[0]
    return flat


def state_dict_from_flat_params(flat: Mapping[str, np.ndarray], arch: Arch) -> dict[str, np.ndarray]:
    """Flat prfdn-jax parameters -> state dict with the released key names (float32 OIHW numpy arrays)."""
    sd = {}
    for name, prefixes in conv_table(arch):
        k, b = np.asarray(flat[name + ".kernel"]), np.asarray(flat[name + ".bias"])
        if not is_stacked(arch, name):
            k, b = k[None], b[None]
        for i, p in enumerate(prefixes):
            sd[p + ".weight"] = _oihw(k[i])
            sd[p + ".bias"] = np.array(b[i], np.float32)
    return sd


# ----------------------------------------------------------------------------- the WideNet layout
def is_wide_state_dict(sd: Mapping[str, object]) -> bool:
    """Whether ``sd`` has the grouped-conv layout of the PyTorch ``WideNet`` (keys ``fea.<b>.weight``)."""
    return "fea.0.weight" in sd and "upsampler.0.weight" in sd


def _shape(v) -> tuple[int, ...]:
    return tuple(int(s) for s in v.shape)


def _wide_parts(layout: str, depth: int) -> list[tuple[str, int]]:
    n, s, _ = LAYOUTS[layout]
    return ([("srfdb", s)] if s else []) + [(f"stages.{d}", n) for d in range(depth)]


def wide_arch_from_state_dict(sd: Mapping[str, object]) -> Arch:
    """The ``form='wide'`` :class:`Arch` of a ``WideNet`` state dict (per-branch widths from the grouped
    conv shapes). Raises :class:`StateDictError` naming the first missing, extra or mis-shaped key."""
    if not is_wide_state_dict(sd):
        raise StateDictError("not a WideNet state dict: no 'fea.0.weight' / 'upsampler.0.weight' key")
    n = sum(1 for k in sd if re.fullmatch(r"fea\.\d+\.weight", k))
    has_srfdb = any(k.startswith("srfdb.") for k in sd)
    layout = next((k for k, lay in LAYOUTS.items() if lay.branches == n and (lay.srfdb > 0) == has_srfdb), None)
    if layout is None:
        raise StateDictError(f"unrecognised WideNet layout: {n} first convs, SRFDB={has_srfdb}")
    depth = len({m.group(1) for k in sd if (m := re.match(r"stages\.(\d+)\.", k))})
    if depth == 0:
        raise StateDictError("WideNet state dict without 'stages.0.*' keys")
    fea = _shape(sd["fea.0.weight"])
    widths = {"fea": (fea[1], fea[0])}
    for part, g in _wide_parts(layout, depth):
        for k in sorted(sd):
            if k.startswith(part + ".") and k.endswith(".weight"):
                name, (o, i, *_) = k[: -len(".weight")], _shape(sd[k])
                widths[name] = (i // g, o // g) if name.endswith(".c5") else (i, o // g)
    for name, key in (("c", "c"), ("LR_conv", "LR_conv"), ("upsampler", "upsampler.0")):
        if key + ".weight" not in sd:
            raise StateDictError(f"missing key '{key}.weight'")
        o, i, *_ = _shape(sd[key + ".weight"])
        widths[name] = (i, o)
    try:
        scale = scale_from_upsampler(widths["upsampler"][1])
        arch = Arch.make("wide", layout, scale, widths)
    except ValueError as e:
        raise StateDictError(f"WideNet state dict: {e}") from None
    errs = width_errors(arch)
    if errs:
        raise StateDictError(f"WideNet state dict: conv {errs[0][0]!r} does not fit the layers it connects to")
    expected = set(_wide_keys(arch))
    for k in sd:
        if k not in expected:
            raise StateDictError(f"unexpected key {k!r} (shape {_shape(sd[k])}) in a WideNet state dict")
    for k in expected:
        if k not in sd:
            raise StateDictError(f"missing key {k!r} in a WideNet state dict")
    return arch


def _wide_keys(arch: Arch) -> list[str]:
    names = [f"fea.{b}" for b in range(arch.branches)]
    names += [k for k in arch.w if k.startswith(("srfdb.", "stages."))] + ["c", "LR_conv", "upsampler.0"]
    return [f"{p}.{t}" for p in names for t in ("weight", "bias")]


def flat_from_wide_state_dict(sd: Mapping[str, np.ndarray], arch: Arch) -> dict[str, np.ndarray]:
    """``WideNet`` state dict -> flat prfdn-jax parameters of the wide ``arch`` (inverse of
    :func:`wide_state_dict`); raises :class:`StateDictError` if a dense ``c5`` has weight outside its
    branch blocks (the network is then not a stack of independent branches)."""
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    n, w = arch.branches, arch.w
    flat = {"fea.kernel": np.stack([_hwio(sd[f"fea.{b}.weight"]) for b in range(n)]),
            "fea.bias": np.stack([sd[f"fea.{b}.bias"] for b in range(n)])}
    for part, g in _wide_parts(arch.layout, arch.depth):
        for name in (k for k in w if k.startswith(part + ".")):
            weight, cout = sd[name + ".weight"], w[name][1]
            if name.endswith(".c5"):
                cols = [c5_columns(w, part + ".", g, b) for b in range(g)]
                mask = np.zeros(weight.shape[:2], bool)
                for b in range(g):
                    mask[b * cout:(b + 1) * cout, cols[b]] = True
                if np.any(weight[~mask] != 0):
                    raise StateDictError(f"{name}.weight: weights outside the branch blocks; not a stacked network")
                ks = [_hwio(weight[b * cout:(b + 1) * cout][:, cols[b]]) for b in range(g)]
            else:
                ks = [_hwio(weight[b * cout:(b + 1) * cout]) for b in range(g)]
            flat[name + ".kernel"] = np.stack(ks)
            flat[name + ".bias"] = sd[name + ".bias"].reshape(g, cout)
    perm = groupcat_perm([w[f"stages.{d}.c5"][1] for d in range(arch.depth)], n)
    flat["c.kernel"], flat["c.bias"] = _hwio(sd["c.weight"][:, perm]), sd["c.bias"]
    flat["LR_conv.kernel"], flat["LR_conv.bias"] = _hwio(sd["LR_conv.weight"]), sd["LR_conv.bias"]
    flat["upsampler.kernel"], flat["upsampler.bias"] = _hwio(sd["upsampler.0.weight"]), sd["upsampler.0.bias"]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()}


def wide_state_dict(flat: Mapping[str, np.ndarray], arch: Arch) -> dict[str, np.ndarray]:
    """Flat prfdn-jax parameters of a branch / wide / RFDN net -> state dict of the PyTorch ``WideNet``.

    Stacked layers become grouped convs (branch-major output channels); each block's ``c5`` and the
    fusion conv ``c`` become dense, block-structured 1x1 convs (the concat permutations folded in).
    """
    if arch.form == "merged":
        raise StateDictError("the WideNet layout needs a branch or wide network, not a merged one")
    w, sd = arch.w, {}
    fk, fb = np.asarray(flat["fea.kernel"]), np.asarray(flat["fea.bias"])
    for b in range(fk.shape[0]):
        sd[f"fea.{b}.weight"], sd[f"fea.{b}.bias"] = _oihw(fk[b]), fb[b]
    for part, g in _wide_parts(arch.layout, arch.depth):
        for name in (k for k in w if k.startswith(part + ".")):
            k, bias = np.asarray(flat[name + ".kernel"]), np.asarray(flat[name + ".bias"])
            if name.endswith(".c5"):
                cin, cout = w[name]
                dense = np.zeros((g * cout, g * cin) + k.shape[1:3], np.float32)
                for b in range(g):
                    dense[b * cout:(b + 1) * cout, c5_columns(w, part + ".", g, b)] = _oihw(k[b])
                sd[name + ".weight"] = dense
            else:
                sd[name + ".weight"] = np.concatenate([_oihw(k[b]) for b in range(g)], axis=0)
            sd[name + ".bias"] = bias.reshape(-1)
    ck = _oihw(flat["c.kernel"])  # torch columns: plain concat of the stage outputs; JAX rows: branch-major
    c = np.zeros_like(ck)
    c[:, groupcat_perm([w[f"stages.{d}.c5"][1] for d in range(arch.depth)], arch.branches)] = ck
    sd["c.weight"], sd["c.bias"] = c, flat["c.bias"]
    sd["LR_conv.weight"], sd["LR_conv.bias"] = _oihw(flat["LR_conv.kernel"]), flat["LR_conv.bias"]
    sd["upsampler.0.weight"], sd["upsampler.0.bias"] = _oihw(flat["upsampler.kernel"]), flat["upsampler.bias"]
    return {k: np.array(v, np.float32, order="C") for k, v in sd.items()}


# ----------------------------------------------------------------------------- detection
def unmatched_keys(sd: Mapping[str, object]) -> list[str]:
    """Keys that are no RFDN / PRFDN conv parameter name (released or WideNet layout), in file order."""
    return [k for k in sd if not _KNOWN_KEY.match(k)]


def arch_and_flat_from_state_dict(sd: Mapping[str, np.ndarray], form: str | None = None
                                  ) -> tuple[Arch, dict[str, np.ndarray]]:
    """``(Arch, flat parameters)`` of a float32 numpy state dict in the released or the WideNet layout.

    ``form`` as :func:`prfdn_jax.spec.arch_from_state_dict` (released branch checkpoints: 'branch' or
    'wide'). An unknown architecture raises one :class:`StateDictError` line that names the first keys
    that did not match (or, when every key has a known name, the spec's message naming the bad key).
    """
    try:
        if is_wide_state_dict(sd):
            arch = wide_arch_from_state_dict(sd)
            if form not in (None, "wide", "branch"):
                raise StateDictError(f"a WideNet checkpoint cannot be read as form {form!r}")
            return (arch.replace(form=form) if form else arch), flat_from_wide_state_dict(sd, arch)
        arch = arch_from_state_dict(sd, form)
        return arch, flat_params_from_state_dict(sd, arch)
    except StateDictError as e:
        bad = unmatched_keys(sd)
        if not bad:
            raise
        named = ", ".join(repr(k) for k in bad[:_MAX_NAMED]) + (f" (+{len(bad) - _MAX_NAMED} more)"
                                                                 if len(bad) > _MAX_NAMED else "")
        raise StateDictError(f"{e}; unknown architecture, first keys that did not match: {named}") from None
