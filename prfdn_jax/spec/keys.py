"""The released PyTorch key names of every conv, and architecture detection from a state dict's keys.

One table, :func:`conv_table`, maps every conv of an :class:`Arch` to its PyTorch prefix (for branch
stacks one prefix per branch); weights are ``<prefix>.weight`` (OIHW) and ``<prefix>.bias``:

=====================  ===============================  ===========================================
prfdn-jax conv         branch / wide form (branch b)    merged form (N input copies)
=====================  ===============================  ===========================================
``fea``                ``fea_conv`` / ``fea_conv{b*D}`` ``fea_conv12..N``
``srfdb.<conv>``       ``B2S{b*D}.<conv>``              ``B2S{b*D for SRFDB branches}.<conv>``
``stages.<d>.<conv>``  ``B{b*D+d+1}.<conv>``            ``B{b*D+d+1 for all b}.<conv>``
``c`` / ``upsampler``  ``c.0`` / ``upsampler.0``        same
other                  same name                        same name (``split``, ``cat_p``, ...)
=====================  ===============================  ===========================================

Detection (:func:`arch_from_state_dict`) reads only key names and shapes (anything with ``.shape``:
numpy arrays, torch tensors), so it needs neither torch nor jax. The layout is the one of
:data:`~prfdn_jax.spec.LAYOUTS` whose first convs and SRFDB blocks (by this table) are the state dict's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from prfdn_jax.spec.couplings import width_errors
from prfdn_jax.spec.topology import (ESA_CONVS, LAYOUTS, Arch, block_steps, distilled_names, geometry,
                                     scale_from_upsampler)

TOP_KEYS = {"c": "c.0", "upsampler": "upsampler.0"}  # prfdn-jax name -> released prefix (nn.Sequential)


class StateDictError(ValueError):
    """A state dict that does not fit the expected architecture (message names the key)."""


def _shape(v) -> tuple[int, ...]:
    return tuple(int(s) for s in v.shape)


def _digits(xs) -> str:
    return "".join(str(x) for x in xs)


def fea_prefixes(branches: int, depth: int, merged: bool) -> list[str]:
    """Released prefixes of the first conv: one per branch (``fea_conv``, ``fea_conv{b*D}``), or one merged."""
    if merged:
        return ["fea_conv" + _digits(range(1, branches + 1))]
    return ["fea_conv" + (str(b * depth) if b else "") for b in range(branches)]


def block_prefix(part: str, arch_layout: str, depth: int, merged: bool) -> list[str]:
    """Released prefixes of block ``part`` (``srfdb`` or ``stages.<d>``): one per branch, or one merged."""
    n, s, _ = LAYOUTS[arch_layout]
    if part == "srfdb":
        idx = [b * depth for b in range(n - s, n)]
        return ["B2S" + _digits(idx)] if merged else [f"B2S{i}" for i in idx]
    d = int(part.split(".")[1])
    idx = [b * depth + d + 1 for b in range(n)]
    return ["B" + _digits(idx)] if merged else [f"B{i}" for i in idx]


def conv_table(arch: Arch) -> list[tuple[str, list[str]]]:
    """``[(prfdn-jax conv name, [released prefix per branch])]``; one prefix for unstacked convs."""
    n, merged, depth = arch.branches, arch.form == "merged", arch.depth
    table = []
    for name, _ in arch.widths:
        head, _, rest = name.partition(".")
        if head == "fea":
            prefixes = fea_prefixes(n, depth, merged)
        elif head == "srfdb":
            prefixes = [f"{p}.{rest}" for p in block_prefix("srfdb", arch.layout, depth, merged)]
        elif head == "stages":
            d, _, conv = rest.partition(".")
            prefixes = [f"{p}.{conv}" for p in block_prefix(f"stages.{d}", arch.layout, depth, merged)]
        else:
            prefixes = [TOP_KEYS.get(name, name)]
        table.append((name, prefixes))
    return table


def is_stacked(arch: Arch, name: str) -> bool:
    """Whether conv ``name`` of ``arch`` has a leading branch axis in prfdn-jax."""
    return arch.form != "merged" and name.split(".")[0] in ("fea", "srfdb", "stages")


def expected_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """Every released key of ``arch`` with its shape (weights OIHW)."""
    out = {}
    w = arch.w
    for name, prefixes in conv_table(arch):
        k = geometry(name)[0]
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


# ----------------------------------------------------------------------------- detection
def _known(name: str) -> bool:
    try:
        geometry(name)
        return True
    except KeyError:
        return False


def _skeleton(sd, layout: str, depth: int, merged: bool) -> dict[str, tuple[int, int]]:
    """Conv names of the network (widths are placeholders), with block convs read from the keys."""
    names = {"fea": (0, 0)}
    parts = (["srfdb"] if LAYOUTS[layout].srfdb else []) + [f"stages.{d}" for d in range(depth)]
    for part in parts:
        prefix = block_prefix(part, layout, depth, merged)[0]
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
    extra = ["split_left", "split_right"] if merged and LAYOUTS[layout].srfdb else []
    extra += ["cat_p"] if merged and "cat_p.weight" in sd else []
    extra += ["split"] if merged else []
    names.update({k: (0, 0) for k in [*extra, "c", "LR_conv", "upsampler"]})
    return names


def _odd_part(arch: Arch, err):
    """When a conv reading a concat has the wrong input width, the one concatenated part whose output
    differs from its siblings' (the tensor that was changed), as an error ``(conv, 'out', expected, actual)``."""
    name, side, _, actual = err
    if side != "in":
        return None
    w = arch.w
    if name.endswith(".cat_p") or (name.endswith(".c5") and name[:-2] + "cat_p" not in w):
        p = name.rsplit(".", 1)[0] + "."
        parts = [p + c for c in distilled_names(block_steps(w, p))]
    elif arch.form == "merged" and (name == "cat_p" or (name == "c" and "cat_p" not in w)):
        parts = [f"stages.{d}.c5" for d in range(arch.depth)]
    else:
        return None
    outs = [w[q][1] for q in parts]
    for k, q in enumerate(parts):
        others = outs[:k] + outs[k + 1:]
        if others and len(set(others)) == 1 and actual - sum(others) == others[0] != outs[k]:
            return (q, "out", others[0], outs[k])
    return None


def _detect_layout(keys) -> tuple[str, int, bool]:
    """``(layout, depth, merged)``: the layout of :data:`LAYOUTS` whose first-conv and SRFDB prefixes
    (:func:`fea_prefixes`, :func:`block_prefix`) are exactly those of ``keys``, branch form before merged.

    D is the layout's, or for a layout of any depth (RFDN) the number of ``B<i>`` blocks.
    """
    heads = {m.group(1) for k in keys if (m := re.match(r"(fea_conv\d*|B2S\d+|B\d+)\.", k))}
    fea = {h for h in heads if h.startswith("fea_conv")}
    srfdb = {h for h in heads if h.startswith("B2S")}
    n_blocks = len(heads - fea - srfdb)
    for merged in (False, True):
        for name, lay in LAYOUTS.items():
            depth = lay.depth or max(n_blocks // (1 if merged else lay.branches), 1)
            want_srfdb = set(block_prefix("srfdb", name, depth, merged)) if lay.srfdb else set()
            if set(fea_prefixes(lay.branches, depth, merged)) == fea and want_srfdb == srfdb:
                return name, depth, merged
    raise StateDictError(f"unrecognised layout: first convs {sorted(fea)} and SRFDB blocks {sorted(srfdb)} "
                         f"fit none of {', '.join(LAYOUTS)}")


def arch_from_state_dict(sd: Mapping[str, object], form: str | None = None) -> Arch:
    """Recognise the architecture of a released-style state dict from its keys and shapes.

    ``form``: 'branch' or 'wide' for branch checkpoints (default 'branch'); merged ones are 'merged'.
    """
    keys = {k for k in sd if k.endswith(".weight")}
    if "upsampler.0.weight" not in keys or not any(k.startswith("fea_conv") for k in keys):
        raise StateDictError("not an RFDN/PRFDN state dict: no 'fea_conv*' or 'upsampler.0.weight' key")
    out_ch = _shape(sd["upsampler.0.weight"])[0]
    try:
        scale = scale_from_upsampler(out_ch)
    except ValueError:
        raise StateDictError(f"'upsampler.0.weight' has {out_ch} outputs, not 3*r*r for an integer r") from None
    layout, depth, merged = _detect_layout(keys)
    if merged:
        form = "merged"
    else:
        form = form or "branch"
        if form not in ("branch", "wide"):
            raise StateDictError(f"a branch checkpoint cannot be read as form {form!r}")
    # Names come from the checkpoint: gather the convs of each part under its first released prefix.
    probe = Arch.make(form, layout, scale, _skeleton(sd, layout, depth, form == "merged"))
    widths, table = {}, conv_table(probe)
    for name, prefixes in table:
        key = prefixes[0] + ".weight"
        if key not in sd:
            raise StateDictError(f"missing key {key!r}")
        if len(_shape(sd[key])) != 4:
            raise StateDictError(f"shape mismatch for {key!r}: checkpoint {_shape(sd[key])}, expected a 4-D conv weight")
        o, i, _, _ = _shape(sd[key])
        widths[name] = (i, o)
    arch = Arch.make(form, layout, scale, widths)
    errs = width_errors(arch)
    if errs:
        name, side, exp, _ = _odd_part(arch, errs[0]) or errs[0]
        key = dict(table)[name][0] + ".weight"
        got = _shape(sd[key])
        want = (exp, *got[1:]) if side == "out" else (got[0], exp, *got[2:])
        raise StateDictError(f"shape mismatch for {key!r}: checkpoint {got}, expected {want} "
                             "from the layers it connects to")
    return arch
