"""PyTorch state dicts (the released key names) <-> prfdn-jax parameters, both ways, exactly.

One table, :func:`conv_table`, maps every conv of an :class:`~prfdn_jax.networks.Arch` to its PyTorch
prefix (and, for branch stacks, to one prefix per branch):

=====================  ===============================  ===========================================
prfdn-jax conv         branch / wide form (branch b)    merged form (N input copies)
=====================  ===============================  ===========================================
``fea``                ``fea_conv`` / ``fea_conv{b*D}`` ``fea_conv12..N``
``srfdb.<conv>``       ``B2S{b*D}.<conv>``              ``B2S{b*D for SRFDB branches}.<conv>``
``stages.<d>.<conv>``  ``B{b*D+d+1}.<conv>``            ``B{b*D+d+1 for all b}.<conv>``
``c`` / ``upsampler``  ``c.0`` / ``upsampler.0``        same
other                  same name                        same name (``split``, ``cat_p``, ...)
=====================  ===============================  ===========================================

Weights: PyTorch OIHW <-> Flax HWIO (``transpose(2, 3, 1, 0)``); biases unchanged. Stacked layers gain a
leading branch axis. Pure transposes and stacking: a round trip is bit-exact.
The state dict is plain tensors: no torch import here (``numpy`` arrays or ``torch.Tensor`` both work).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from prfdn_jax.blocks import ESA_CONVS, geometry
from prfdn_jax.networks import LAYOUTS, Arch, width_errors

_TOP = {"c": "c.0", "upsampler": "upsampler.0"}
_DEPTH = {"b4s": 1, "b2s": 2, "b2": 2}


class StateDictError(ValueError):
    """A state dict that does not fit the expected architecture (message names the key)."""


def _shape(v) -> tuple[int, ...]:
    return tuple(int(s) for s in v.shape)


def _digits(xs) -> str:
    return "".join(str(x) for x in xs)


def conv_table(arch: Arch) -> list[tuple[str, list[str]]]:
    """``[(jax conv name, [torch prefix per branch])]``; one prefix for unstacked convs."""
    n, s, d_ = arch.branches, LAYOUTS[arch.layout][1], arch.depth
    table = []
    for name, _ in arch.widths:
        head, _, rest = name.partition(".")
        if head == "fea":
            if arch.form == "merged":
                prefixes = ["fea_conv" + _digits(range(1, n + 1))]
            else:
                prefixes = ["fea_conv" + (str(b * d_) if b else "") for b in range(n)]
        elif head == "srfdb":
            idx = [b * d_ for b in range(n - s, n)]
            prefixes = (["B2S" + _digits(idx)] if arch.form == "merged" else [f"B2S{i}" for i in idx])
            prefixes = [f"{p}.{rest}" for p in prefixes]
        elif head == "stages":
            d, _, conv = rest.partition(".")
            idx = [b * d_ + int(d) + 1 for b in range(n)]
            prefixes = (["B" + _digits(idx)] if arch.form == "merged" else [f"B{i}" for i in idx])
            prefixes = [f"{p}.{conv}" for p in prefixes]
        else:
            prefixes = [_TOP.get(name, name)]
        table.append((name, prefixes))
    return table


def _stacked(arch: Arch, name: str) -> bool:
    return arch.form != "merged" and name.split(".")[0] in ("fea", "srfdb", "stages")


def arch_from_state_dict(sd: Mapping[str, object], form: str | None = None) -> Arch:
    """Recognise the architecture of a released-style state dict from its keys and shapes.

    ``form``: 'branch' or 'wide' for branch checkpoints (default 'branch'); merged ones are 'merged'.
    """
    keys = {k for k in sd if k.endswith(".weight")}
    if "upsampler.0.weight" not in keys or not any(k.startswith("fea_conv") for k in keys):
        raise StateDictError("not an RFDN/PRFDN state dict: no 'fea_conv*' or 'upsampler.0.weight' key")
    out_ch = _shape(sd["upsampler.0.weight"])[0]
    scale = int(round((out_ch / 3) ** 0.5))
    if 3 * scale * scale != out_ch:
        raise StateDictError(f"'upsampler.0.weight' has {out_ch} outputs, not 3*r*r for an integer r")
    merged = [m.group(1) for k in keys if (m := re.fullmatch(r"fea_conv(\d{2,})\.weight", k))]
    blocks = sorted({int(m.group(1)) for k in keys if (m := re.match(r"B(\d)\.", k))})
    has_srfdb = any(k.startswith("B2S") for k in keys)
    if merged:
        n = len(merged[0])
        layout = next((lay for lay, (ln, ls) in LAYOUTS.items() if ln == n and (ls > 0) == has_srfdb), None)
        if layout is None:
            raise StateDictError(f"unrecognised merged layout: {n} input copies, SRFDB={has_srfdb}")
        depth = len({m.group(0) for k in keys if (m := re.match(r"B\d+\.", k))})
        form = "merged"
    else:
        if "fea_conv1.weight" in keys:
            layout = "b4s"
        elif "fea_conv2.weight" in keys:
            layout = "b2s" if has_srfdb else "b2"
        else:
            layout = "rfdn"
        depth = len(blocks) if layout == "rfdn" else _DEPTH[layout]
        form = form or "branch"
        if form not in ("branch", "wide"):
            raise StateDictError(f"a branch checkpoint cannot be read as form {form!r}")
    # Names come from the checkpoint: gather the convs of each part under its first torch prefix.
    probe = Arch.make(form, layout, scale, _skeleton(sd, layout, depth, form == "merged"))
    widths, table = {}, conv_table(probe)
    for name, prefixes in table:
        key = prefixes[0] + ".weight"
        if key not in sd:
            raise StateDictError(f"missing key {key!r}")
        if len(_shape(sd[key])) != 4:
            raise StateDictError(f"shape mismatch for {key!r}: checkpoint {_shape(sd[key])}, expected a 4-D conv weight")
        o, i, kh, kw = _shape(sd[key])
        widths[name] = (i, o)
    arch = Arch.make(form, layout, scale, widths)
    errs = width_errors(arch)
    if errs:
        name, side, exp, act = errs[0]
        key = dict(table)[name][0] + ".weight"
        got = _shape(sd[key])
        want = (exp, *got[1:]) if side == "out" else (got[0], exp, *got[2:])
        raise StateDictError(f"shape mismatch for {key!r}: checkpoint {got}, expected {want} "
                             "from the layers it connects to")
    return arch


def _known(name: str) -> bool:
    try:
        geometry(name)
        return True
    except KeyError:
        return False


def _skeleton(sd, layout: str, depth: int, merged: bool) -> dict[str, tuple[int, int]]:
    """Conv names of the network (widths are placeholders), with block convs read from the keys."""
    n, s = LAYOUTS[layout]
    names = {"fea": (0, 0)}
    blocks = {}
    if s:
        idx = [b * depth for b in range(n - s, n)]
        blocks["srfdb"] = "B2S" + _digits(idx) if merged else f"B2S{idx[0]}"
    for d in range(depth):
        idx = [b * depth + d + 1 for b in range(n)]
        blocks[f"stages.{d}"] = "B" + _digits(idx) if merged else f"B{idx[0]}"
    for part, prefix in blocks.items():
        subs = sorted(k[len(prefix) + 1:-len(".weight")] for k in sd
                      if k.startswith(prefix + ".") and k.endswith(".weight") and _known(k[len(prefix) + 1:-7]))
        if not subs:
            raise StateDictError(f"missing block {prefix!r} (no '{prefix}.*' keys)")
        steps = 1 if part == "srfdb" else 3
        required = [f"c{i}_{t}" for i in range(1, steps + 1) for t in "dr"] + ["c4", "c5"]
        for sub in required + [f"esa.{c}" for c in ESA_CONVS]:
            if sub not in subs:
                raise StateDictError(f"missing key '{prefix}.{sub}.weight'")
        names.update({f"{part}.{sub}": (0, 0) for sub in subs})
    extra = ["split_left", "split_right"] if merged and s else []
    extra += ["cat_p"] if merged and "cat_p.weight" in sd else []
    extra += ["split"] if merged else []
    names.update({k: (0, 0) for k in [*extra, "c", "LR_conv", "upsampler"]})
    return names


def expected_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """Every torch key of ``arch`` with its shape."""
    out = {}
    w = arch.w
    for name, prefixes in conv_table(arch):
        k = geometry(name)[0] if "." in name else (3 if name in ("fea", "LR_conv", "upsampler") else 1)
        cin, cout = w[name]
        for p in prefixes:
            out[p + ".weight"] = (cout, cin, k, k)
            out[p + ".bias"] = (cout,)
    return out


def check_state_dict(sd: Mapping[str, object], arch: Arch) -> None:
    """Raise :class:`StateDictError` naming the first missing, extra or mis-shaped key."""
    exp = expected_shapes(arch)
    for key, shape in exp.items():
        if key not in sd:
            raise StateDictError(f"missing key {key!r} (expected shape {shape})")
        if _shape(sd[key]) != shape:
            raise StateDictError(f"shape mismatch for {key!r}: checkpoint {_shape(sd[key])}, model {shape}")
    for key in sd:
        if key not in exp:
            raise StateDictError(f"unexpected key {key!r} (shape {_shape(sd[key])})")


def to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def flat_params_from_state_dict(sd: Mapping[str, object], arch: Arch) -> dict[str, np.ndarray]:
    """Torch state dict -> flat prfdn-jax parameters ``{'stages.0.c1_d.kernel': HWIO array, ...}``."""
    check_state_dict(sd, arch)
    flat = {}
    for name, prefixes in conv_table(arch):
        ks = [to_numpy(sd[p + ".weight"]).transpose(2, 3, 1, 0) for p in prefixes]
        bs = [to_numpy(sd[p + ".bias"]) for p in prefixes]
        stack = _stacked(arch, name)
        flat[name + ".kernel"] = np.stack(ks) if stack else ks[0]
        flat[name + ".bias"] = np.stack(bs) if stack else bs[0]
    return flat


def state_dict_from_flat_params(flat: Mapping[str, np.ndarray], arch: Arch) -> dict[str, np.ndarray]:
    """Flat prfdn-jax parameters -> state dict of numpy arrays with the released key names (OIHW)."""
    sd = {}
    for name, prefixes in conv_table(arch):
        k, b = np.asarray(flat[name + ".kernel"]), np.asarray(flat[name + ".bias"])
        if not _stacked(arch, name):
            k, b = k[None], b[None]
        for i, p in enumerate(prefixes):
            sd[p + ".weight"] = np.ascontiguousarray(k[i].transpose(3, 2, 0, 1))
            sd[p + ".bias"] = b[i]
    return sd
