"""PyTorch reference implementation of RFDN / PRFDN (NCHW activations, OIHW weights).

This module is the ground truth the JAX port is tested against, and the network Torch-Pruning runs
on. It is deliberately plain ``torch.nn``: every layer is an ``nn.Conv2d`` with a bias, concatenation
is ``torch.cat``, and in the merged (re-parametrized / pruned) form channel selection and permutation
are real 1x1 convs (``split``, ``split_left``, ``split_right``, ``cat_p``) so that a dependency-graph
pruner sees every channel coupling. ``torch.split`` / ``torch.chunk`` are never used.

Widths are data: every block takes a dict ``{conv_name: (cin, cout)}``. Kernel size, stride and padding
are fixed per conv name (see ``kernel_of``), so the same classes serve the unpruned networks and
networks pruned to arbitrary per-layer widths. Forward passes follow
``shared/docs/rfdn-prfdn-reference.md`` exactly.

Public API
----------
``ESA``, ``RFDB``, ``SRFDB``, ``RFDN``, ``BranchNet``, ``MergedNet``, ``WideNet`` (grouped convs),
``esa_widths``, ``rfdb_widths``, ``merged_widths``, ``widths_from_state_dict``,
``build_from_state_dict``, ``count_params``, ``kernel_of``, ``ACT_SLOPE``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACT_SLOPE",
    "ESA",
    "RFDB",
    "SRFDB",
    "RFDN",
    "BranchNet",
    "MergedNet",
    "WideNet",
    "esa_widths",
    "rfdb_widths",
    "merged_widths",
    "widths_from_state_dict",
    "build_from_state_dict",
    "count_params",
    "kernel_of",
]

ACT_SLOPE = 0.05  # LeakyReLU negative slope used everywhere outside ESA

Widths = dict[str, tuple[int, int]]

# kernel size per conv name (the last component of the state-dict prefix, or 'c.0' / 'upsampler.0')
_KERNEL = {
    "c1_d": 1, "c2_d": 1, "c3_d": 1, "c1_r": 3, "c2_r": 3, "c3_r": 3, "c4": 3, "c5": 1, "cat_p": 1,
    "split": 1, "split_left": 1, "split_right": 1, "c.0": 1, "LR_conv": 3, "upsampler.0": 3,
}
_ESA_KERNEL = {"conv1": 1, "conv_f": 1, "conv_max": 3, "conv2": 3, "conv3": 3, "conv3_": 3, "conv4": 1}
_ESA_NAMES = tuple(_ESA_KERNEL)


def kernel_of(name: str) -> tuple[int, int, int]:
    """(kernel, stride, padding) of the conv with state-dict prefix ``name`` (e.g. 'B1234.esa.conv2').

    ESA convs are recognised by their own names (conv1, conv_f, ...; 'esa.' prefix optional); ESA's
    conv2 is 3x3 stride 2 padding 0; every other conv is stride 1 with padding (k - 1) // 2.
    """
    parts = name.split(".")
    last = parts[-1]
    tail2 = ".".join(parts[-2:])
    if tail2 in ("c.0", "upsampler.0"):
        k = _KERNEL[tail2]
    elif last in _ESA_KERNEL:
        if last == "conv2":
            return 3, 2, 0
        k = _ESA_KERNEL[last]
    elif last in _KERNEL:
        k = _KERNEL[last]
    elif re.fullmatch(r"fea_conv\d*", last):
        k = 3
    else:
        raise ValueError(f"unknown conv name {name!r}")
    return k, 1, (k - 1) // 2


def _conv(name: str, cin: int, cout: int, groups: int = 1) -> nn.Conv2d:
    """Conv ``name`` with ``cin -> cout`` per group; ``groups`` > 1 gives a grouped conv of
    ``groups*cin -> groups*cout`` channels (branch-major: group g is branch g)."""
    k, s, p = kernel_of(name)
    g = int(groups)
    return nn.Conv2d(g * int(cin), g * int(cout), k, stride=s, padding=p, groups=g, bias=True)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _sub(widths: Mapping[str, tuple[int, int]], prefix: str) -> Widths:
    """Entries of ``widths`` under ``prefix.`` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: tuple(v) for k, v in widths.items() if k.startswith(p)}


def count_params(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------- widths

def esa_widths(n: int, f: int | None = None) -> Widths:
    """Standard ESA widths on ``n`` channels with ``f`` (default n // 4) internal channels."""
    f = n // 4 if f is None else f
    return {
        "conv1": (n, f), "conv_f": (f, f), "conv_max": (f, f), "conv2": (f, f),
        "conv3": (f, f), "conv3_": (f, f), "conv4": (f, n),
    }


def rfdb_widths(n: int, steps: int = 3, cat_p: bool = False) -> Widths:
    """Standard widths of an RFDB (steps=3) or SRFDB (steps=1) on ``n`` channels.

    dc = n // 2 distilled channels, ESA f = n // 4; with ``cat_p`` a square (steps+1)*dc permutation conv.
    """
    dc = n // 2
    w: Widths = {}
    for i in range(1, steps + 1):
        w[f"c{i}_d"] = (n, dc)
        w[f"c{i}_r"] = (n, n)
    w["c4"] = (n, dc)
    if cat_p:
        w["cat_p"] = ((steps + 1) * dc, (steps + 1) * dc)
    w["c5"] = ((steps + 1) * dc, n)
    w.update({f"esa.{k}": v for k, v in esa_widths(n).items()})
    return w


def _scaled(w: Mapping[str, tuple[int, int]], k: int) -> Widths:
    return {name: (a * k, b * k) for name, (a, b) in w.items()}


def merged_widths(layout: str, nf: int = 50, scale: int = 2) -> Widths:
    """Full-prefix widths of the UNPRUNED merged network (branch widths times the branch count).

    'b4s': 4 branches (1 plain + 3 with an SRFDB); 'b2s': 2 branches of two RFDBs, SRFDB on branch 2;
    'b2': as 'b2s' without the SRFDB (no split_left / split_right).
    """
    out = 3 * scale * scale
    if layout == "b4s":
        w: Widths = {"fea_conv1234": (12, 4 * nf), "split_left": (4 * nf, nf),
                     "split_right": (4 * nf, 3 * nf)}
        w.update({f"B2S123.{k}": v for k, v in _scaled(rfdb_widths(nf, 1, cat_p=True), 3).items()})
        w.update({f"B1234.{k}": v for k, v in _scaled(rfdb_widths(nf, 3, cat_p=True), 4).items()})
        w.update({"c.0": (4 * nf, nf), "LR_conv": (nf, nf), "split": (4 * nf, nf),
                  "upsampler.0": (nf, out)})
        return w
    if layout == "b2s":
        w = {"fea_conv12": (6, 2 * nf), "split_left": (2 * nf, nf), "split_right": (2 * nf, nf)}
        w.update({f"B2S2.{k}": v for k, v in rfdb_widths(nf, 1, cat_p=False).items()})
        for b in ("B13", "B24"):
            w.update({f"{b}.{k}": v for k, v in _scaled(rfdb_widths(nf, 3, cat_p=True), 2).items()})
        w.update({"cat_p": (4 * nf, 4 * nf), "c.0": (4 * nf, nf), "LR_conv": (nf, nf),
                  "split": (2 * nf, nf), "upsampler.0": (nf, out)})
        return w
    if layout == "b2":
        w = {"fea_conv12": (6, 2 * nf)}
        for b in ("B13", "B24"):
            w.update({f"{b}.{k}": v for k, v in _scaled(rfdb_widths(nf, 3, cat_p=True), 2).items()})
        w.update({"cat_p": (4 * nf, 4 * nf), "c.0": (4 * nf, nf), "LR_conv": (nf, nf),
                  "split": (2 * nf, nf), "upsampler.0": (nf, out)})
        return w
    raise ValueError(f"unknown merged layout {layout!r} (expected 'b4s', 'b2s' or 'b2')")


def widths_from_state_dict(sd: Mapping[str, torch.Tensor]) -> Widths:
    """``{conv_prefix: (cin, cout)}`` for every 4-D ``<prefix>.weight`` tensor in ``sd``."""
    return {k[: -len(".weight")]: (int(v.shape[1]), int(v.shape[0]))
            for k, v in sd.items() if k.endswith(".weight") and v.ndim == 4}


# --------------------------------------------------------------------------------------------- blocks

class ESA(nn.Module):
    """Enhanced spatial attention. ``widths``: dict over conv1, conv_f, conv_max, conv2, conv3, conv3_,
    conv4 (an 'esa.' prefix on the keys is accepted), or an int n for the standard f = n // 4 block.

    ``groups`` > 1: ``groups`` ESAs side by side on branch-major channels (the wide form); ``widths``
    are then per branch and every conv is a grouped conv (pooling and resizing act per channel)."""

    def __init__(self, widths: Mapping[str, tuple[int, int]] | int, groups: int = 1):
        super().__init__()
        if isinstance(widths, int):
            widths = esa_widths(widths)
        w = {k[4:] if k.startswith("esa.") else k: tuple(v) for k, v in widths.items()}
        _check(set(w) == set(_ESA_NAMES),
               f"ESA widths need exactly {list(_ESA_NAMES)}, got {sorted(w)}")
        _check(w["conv_f"][0] == w["conv1"][1] and w["conv2"][0] == w["conv1"][1],
               f"ESA: conv_f/conv2 must read conv1's {w['conv1'][1]} channels: {w}")
        _check(w["conv_max"][0] == w["conv2"][1] and w["conv3"][0] == w["conv_max"][1]
               and w["conv3_"][0] == w["conv3"][1], f"ESA: conv2->conv_max->conv3->conv3_ chain broken: {w}")
        _check(w["conv3_"][1] == w["conv_f"][1] == w["conv4"][0],
               f"ESA: conv3_ and conv_f outputs are added and feed conv4: {w}")
        _check(w["conv4"][1] == w["conv1"][0], f"ESA: conv4 must output conv1's {w['conv1'][0]} channels: {w}")
        self.widths = w
        self.groups = int(groups)
        self.in_channels = self.out_channels = w["conv1"][0] * self.groups
        for name in _ESA_NAMES:
            setattr(self, name, _conv(f"esa.{name}", *w[name], groups=self.groups))
        self.relu = nn.ReLU()
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        v = F.max_pool2d(c1, kernel_size=7, stride=3)
        v = self.relu(self.conv_max(v))
        c3 = self.relu(self.conv3(v))
        c3 = self.conv3_(c3)
        c3 = F.interpolate(c3, size=(x.size(2), x.size(3)), mode="bilinear", align_corners=False)
        cf = self.conv_f(c1_)
        m = self.sigmoid(self.conv4(c3 + cf))
        return x * m


class RFDB(nn.Module):
    """Residual feature distillation block with ``steps`` distillation steps (3: RFDB, 1: SRFDB).

    ``widths`` maps local conv names (c{i}_d, c{i}_r, c4, [cat_p], c5, esa.*) to (cin, cout); ``steps``
    is inferred from the c{i}_d entries. An int ``widths`` builds the standard block on that many
    channels (then ``steps`` and ``cat_p`` are used). With a ``cat_p`` entry the concat before c5 goes
    through that 1x1 conv. No block-level residual.

    ``groups`` > 1 (the wide / re-parametrized form, used to prune uniformly): ``groups`` blocks side
    by side on branch-major channels, ``widths`` per branch. Every conv is a grouped conv except
    ``c5``, which is a DENSE 1x1 conv ``groups*cat -> groups*out`` reading the plain (tensor-major)
    concat ``[d1 (all branches), d2 (all), ..., r4 (all)]``: branch g's kernel sits in rows
    ``g*out:(g+1)*out`` and, for each concatenated tensor t of per-branch width w_t at per-branch
    offset o_t, in columns ``groups*o_t + g*w_t : groups*o_t + (g+1)*w_t``; every other entry is
    zero. This folds the channel interleaving into c5, so a dependency-graph pruner sees only
    ``torch.cat`` and convs.
    """

    def __init__(self, widths: Mapping[str, tuple[int, int]] | int, steps: int | None = None,
                 cat_p: bool = False, groups: int = 1):
        super().__init__()
        if isinstance(widths, int):
            widths = rfdb_widths(widths, 3 if steps is None else steps, cat_p)
        w = {k: tuple(int(a) for a in v) for k, v in widths.items()}
        inferred = 0
        while f"c{inferred + 1}_d" in w:
            inferred += 1
        _check(inferred >= 1, f"RFDB widths have no c1_d entry: {sorted(w)}")
        _check(steps is None or steps == inferred,
               f"RFDB: asked for {steps} steps but widths describe {inferred}")
        steps = inferred
        expected = {f"c{i}_{t}" for i in range(1, steps + 1) for t in "dr"} | {"c4", "c5"}
        expected |= {f"esa.{n}" for n in _ESA_NAMES}
        has_cat_p = "cat_p" in w
        if has_cat_p:
            expected.add("cat_p")
        _check(set(w) == expected, f"RFDB widths: unexpected {sorted(set(w) - expected)}, "
                                   f"missing {sorted(expected - set(w))}")
        n = w["c1_r"][0]
        for i in range(1, steps + 1):
            _check(w[f"c{i}_r"] == (n, n), f"RFDB: c{i}_r must be {n}->{n} (residual add), got {w[f'c{i}_r']}")
            _check(w[f"c{i}_d"][0] == n, f"RFDB: c{i}_d must read {n} channels, got {w[f'c{i}_d']}")
        _check(w["c4"][0] == n, f"RFDB: c4 must read {n} channels, got {w['c4']}")
        cat = sum(w[f"c{i}_d"][1] for i in range(1, steps + 1)) + w["c4"][1]
        if has_cat_p:
            _check(w["cat_p"][0] == cat, f"RFDB: cat_p must read the {cat}-channel concat, got {w['cat_p']}")
            cat = w["cat_p"][1]
        _check(w["c5"][0] == cat, f"RFDB: c5 must read {cat} channels, got {w['c5']}")
        _check(w["esa.conv1"][0] == w["c5"][1], f"RFDB: ESA must run on c5's {w['c5'][1]} channels")

        g = int(groups)
        _check(g >= 1, f"RFDB: groups must be >= 1, got {groups}")
        _check(g == 1 or not has_cat_p, "RFDB: a grouped (wide) block has no cat_p")
        self.widths = w
        self.steps = steps
        self.groups = g
        self.in_channels = n * g
        self.out_channels = w["c5"][1] * g
        for i in range(1, steps + 1):
            setattr(self, f"c{i}_d", _conv(f"c{i}_d", *w[f"c{i}_d"], groups=g))
            setattr(self, f"c{i}_r", _conv(f"c{i}_r", *w[f"c{i}_r"], groups=g))
        self.c4 = _conv("c4", *w["c4"], groups=g)
        self.c5 = _conv("c5", w["c5"][0] * g, w["c5"][1] * g)  # dense: see the class doc
        self.act = nn.LeakyReLU(ACT_SLOPE)
        self.esa = ESA(_sub(w, "esa"), groups=g)
        self.cat_p = _conv("cat_p", *w["cat_p"]) if has_cat_p else None
        if g > 1:
            with torch.no_grad():
                self.c5.weight.mul_(self.c5_mask().to(self.c5.weight.dtype)[:, :, None, None])

    def c5_columns(self, branch: int) -> list[int]:
        """Input columns of ``c5`` that belong to ``branch`` (grouped form), in the branch's own
        ``[d1, d2, ..., r4]`` order; computed from the current conv widths (valid after pruning)."""
        g = self.groups
        parts = [getattr(self, f"c{i}_d") for i in range(1, self.steps + 1)] + [self.c4]
        cols, off = [], 0
        for conv in parts:
            w = conv.out_channels // g
            cols.extend(range(g * off + branch * w, g * off + (branch + 1) * w))
            off += w
        return cols

    def c5_mask(self) -> torch.Tensor:
        """``(out, in)`` boolean mask of c5's block structure (all True for groups == 1)."""
        g = self.groups
        mask = torch.zeros(self.c5.out_channels, self.c5.in_channels, dtype=torch.bool)
        out = self.c5.out_channels // g
        for b in range(g):
            mask[b * out:(b + 1) * out, self.c5_columns(b)] = True
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distilled = []
        r = x
        for i in range(1, self.steps + 1):
            distilled.append(self.act(getattr(self, f"c{i}_d")(r)))
            r = self.act(getattr(self, f"c{i}_r")(r) + r)
        distilled.append(self.act(self.c4(r)))
        out = torch.cat(distilled, dim=1)
        if self.cat_p is not None:
            out = self.cat_p(out)
        return self.esa(self.c5(out))


class SRFDB(RFDB):
    """The PRFDN team's small RFDB (class RFDBS upstream): one distillation step."""

    def __init__(self, widths: Mapping[str, tuple[int, int]] | int, cat_p: bool = False, groups: int = 1):
        super().__init__(widths, steps=1, cat_p=cat_p, groups=groups)


def _upsampler(nf: int, scale: int, out_nc: int = 3) -> nn.Sequential:
    return nn.Sequential(_conv("upsampler.0", nf, out_nc * scale * scale), nn.PixelShuffle(scale))


# --------------------------------------------------------------------------------------------- networks

class RFDN(nn.Module):
    """RFDN as released for AIM 2020 (nf=50, 4 blocks, x4); any nf / n_blocks / scale."""

    def __init__(self, nf: int = 50, n_blocks: int = 4, scale: int = 4):
        super().__init__()
        self.nf, self.n_blocks, self.scale = nf, n_blocks, scale
        self.fea_conv = _conv("fea_conv", 3, nf)
        for i in range(1, n_blocks + 1):
            setattr(self, f"B{i}", RFDB(rfdb_widths(nf)))
        self.c = nn.Sequential(_conv("c.0", n_blocks * nf, nf), nn.LeakyReLU(ACT_SLOPE))
        self.LR_conv = _conv("LR_conv", nf, nf)
        self.upsampler = _upsampler(nf, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fea_conv(x)
        outs = []
        b = f
        for i in range(1, self.n_blocks + 1):
            b = getattr(self, f"B{i}")(b)
            outs.append(b)
        out = self.LR_conv(self.c(torch.cat(outs, dim=1))) + f
        return self.upsampler(out)


_BRANCH_KINDS = ("b4s", "b2s", "b2")


class BranchNet(nn.Module):
    """PRFDN branch models before re-parametrization: kind 'b4s', 'b2s' or 'b2' (see the reference doc)."""

    def __init__(self, kind: str, nf: int = 50, scale: int = 4):
        super().__init__()
        _check(kind in _BRANCH_KINDS, f"unknown branch kind {kind!r} (expected one of {_BRANCH_KINDS})")
        self.kind, self.nf, self.scale = kind, nf, scale
        self.fea_conv = _conv("fea_conv", 3, nf)
        if kind == "b4s":
            for k in (1, 2, 3):
                setattr(self, f"fea_conv{k}", _conv(f"fea_conv{k}", 3, nf))
        else:
            self.fea_conv2 = _conv("fea_conv2", 3, nf)
        for i in range(1, 5):
            setattr(self, f"B{i}", RFDB(rfdb_widths(nf)))
        if kind == "b4s":
            for k in (1, 2, 3):
                setattr(self, f"B2S{k}", SRFDB(rfdb_widths(nf, steps=1)))
        elif kind == "b2s":
            self.B2S2 = SRFDB(rfdb_widths(nf, steps=1))
        self.c = nn.Sequential(_conv("c.0", 4 * nf, nf), nn.LeakyReLU(ACT_SLOPE))
        self.LR_conv = _conv("LR_conv", nf, nf)
        self.upsampler = _upsampler(nf, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fea_conv(x)
        if self.kind == "b4s":
            branches = [self.B1(f)]
            for k in (1, 2, 3):
                g = getattr(self, f"fea_conv{k}")(x)
                branches.append(getattr(self, f"B{k + 1}")(getattr(self, f"B2S{k}")(g)))
        else:
            b1 = self.B1(f)
            b2 = self.B2(b1)
            g = self.fea_conv2(x)
            if self.kind == "b2s":
                g = self.B2S2(g)
            b3 = self.B3(g)
            b4 = self.B4(b3)
            branches = [b1, b2, b3, b4]
        out = self.LR_conv(self.c(torch.cat(branches, dim=1))) + f
        return self.upsampler(out)


_MERGED = {
    # layout: (first conv, SRFDB key, RFDB keys, SRFDB has cat_p, model-level cat_p)
    "b4s": ("fea_conv1234", "B2S123", ("B1234",), True, False),
    "b2s": ("fea_conv12", "B2S2", ("B13", "B24"), False, True),
    "b2": ("fea_conv12", None, ("B13", "B24"), False, True),
}


class MergedNet(nn.Module):
    """Dense merged / pruned PRFDN (the team's "RFDNB4S_P" x2 and "RFDNB2S_P" x3 layouts).

    ``widths`` is keyed by each conv's full state-dict prefix (e.g. 'B1234.esa.conv1': (23, 5)), so
    ``widths_from_state_dict(net.state_dict()) == net.widths``. The input is repeated
    ``fea_conv{...}.cin // 3`` times along channels before the first conv.

    'b4s' (x2): f = fea_conv1234(cat[x]*k); f = cat[split_left(f), B2S123(split_right(f))];
        out = act(c.0(B1234(f))); out = LR_conv(out) + split(f); y = PixelShuffle(upsampler.0(out)).
    'b2s' (x3): f = fea_conv12(cat[x]*k); f = cat[split_left(f), B2S2(split_right(f))];
        b13 = B13(f); b24 = B24(b13); out = act(c.0(cat_p(cat[b13, b24])));
        out = LR_conv(out) + split(f); y = PixelShuffle(upsampler.0(out)).
    'b2': as 'b2s' without the SRFDB: f = fea_conv12(cat[x]*k) feeds B13 directly (no split_left /
        split_right; the merged form of a 'b2' branch model).
    """

    def __init__(self, widths: Mapping[str, tuple[int, int]], layout: str, scale: int | None = None):
        super().__init__()
        _check(layout in _MERGED, f"unknown merged layout {layout!r} (expected one of {tuple(_MERGED)})")
        first, skey, rkeys, s_cat_p, m_cat_p = _MERGED[layout]
        w = {k: (int(v[0]), int(v[1])) for k, v in widths.items()}
        top = {first, "split", "c.0", "LR_conv", "upsampler.0"}
        if skey is not None:
            top |= {"split_left", "split_right"}
        if m_cat_p:
            top.add("cat_p")
        blocks = tuple(b for b in (skey, *rkeys) if b is not None)
        stray = {k for k in w if k not in top and k.split(".")[0] not in blocks}
        _check(not stray, f"MergedNet({layout}): unexpected width entries {sorted(stray)}")
        missing = top - set(w)
        _check(not missing, f"MergedNet({layout}): missing width entries {sorted(missing)}")

        cin0, nfeat = w[first]
        _check(cin0 % 3 == 0 and cin0 > 0, f"MergedNet: {first} must read 3*k channels, got {cin0}")
        ups_out = w["upsampler.0"][1]
        r = math.isqrt(ups_out // 3)
        _check(ups_out % 3 == 0 and 3 * r * r == ups_out,
               f"MergedNet: upsampler.0 outputs {ups_out} channels, not 3*r*r")
        _check(scale is None or scale == r, f"MergedNet: scale {scale} but upsampler.0 gives x{r}")
        self.n_copies = cin0 // 3
        self.layout, self.scale = layout, r
        setattr(self, first, _conv(first, cin0, nfeat))

        if skey is not None:
            sw = _sub(w, skey)
            _check("cat_p" not in sw if not s_cat_p else "cat_p" in sw,
                   f"MergedNet({layout}): {skey} must {'' if s_cat_p else 'not '}have cat_p")
            _check(w["split_left"][0] == nfeat and w["split_right"][0] == nfeat,
                   f"MergedNet: split_left/split_right must read {first}'s {nfeat} channels")
            _check(sw.get("c1_r", (None,))[0] == w["split_right"][1],
                   f"MergedNet: {skey} must read split_right's {w['split_right'][1]} channels")
            self.split_left = _conv("split_left", *w["split_left"])
            self.split_right = _conv("split_right", *w["split_right"])
            setattr(self, skey, SRFDB(sw))
            g = w["split_left"][1] + getattr(self, skey).out_channels
        else:
            g = nfeat
        _check(w["split"][0] == g, f"MergedNet: split must read the {g}-channel feature, got {w['split']}")
        ch = g
        for k in rkeys:
            bw = _sub(w, k)
            _check("cat_p" in bw, f"MergedNet({layout}): {k} must have cat_p")
            _check(bw.get("c1_r", (None,))[0] == ch, f"MergedNet: {k} must read {ch} channels")
            setattr(self, k, RFDB(bw, steps=3))
            ch = getattr(self, k).out_channels
        if m_cat_p:
            cat = sum(getattr(self, k).out_channels for k in rkeys)
            _check(w["cat_p"][0] == cat, f"MergedNet: cat_p must read {cat} channels, got {w['cat_p']}")
            self.cat_p = _conv("cat_p", *w["cat_p"])
            ch = w["cat_p"][1]
        _check(w["c.0"][0] == ch, f"MergedNet: c.0 must read {ch} channels, got {w['c.0']}")
        _check(w["LR_conv"][0] == w["c.0"][1], "MergedNet: LR_conv must read c.0's output")
        _check(w["LR_conv"][1] == w["split"][1], "MergedNet: LR_conv and split outputs are added")
        _check(w["upsampler.0"][0] == w["LR_conv"][1], "MergedNet: upsampler.0 must read LR_conv's output")
        self.c = nn.Sequential(_conv("c.0", *w["c.0"]), nn.LeakyReLU(ACT_SLOPE))
        self.LR_conv = _conv("LR_conv", *w["LR_conv"])
        self.split = _conv("split", *w["split"])
        self.upsampler = _upsampler(w["upsampler.0"][0], r)
        self.widths = w
        self._first, self._skey, self._rkeys = first, skey, rkeys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xin = torch.cat([x] * self.n_copies, dim=1) if self.n_copies > 1 else x
        f = getattr(self, self._first)(xin)
        if self._skey is not None:
            f = torch.cat([self.split_left(f), getattr(self, self._skey)(self.split_right(f))], dim=1)
        if self.layout == "b4s":
            out = self.c(self.B1234(f))
        else:
            b13 = self.B13(f)
            b24 = self.B24(b13)
            out = self.c(self.cat_p(torch.cat([b13, b24], dim=1)))
        out = self.LR_conv(out) + self.split(f)
        return self.upsampler(out)

    @staticmethod
    def layout_of(sd: Mapping[str, torch.Tensor]) -> str | None:
        """'b4s', 'b2s' or 'b2' from the first conv's key (and, for two copies, the SRFDB's keys)."""
        for layout, (first, skey, *_rest) in _MERGED.items():
            has_srfdb = skey is not None and any(k.startswith(skey + ".") for k in sd)
            if f"{first}.weight" in sd and (has_srfdb or skey is None):
                return layout
        return None

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> "MergedNet":
        """Build from a merged checkpoint's tensor shapes and load it strictly (eval mode)."""
        sd = _unwrap(sd)
        layout = cls.layout_of(sd)
        _check(layout is not None, "not a merged PRFDN state dict (no fea_conv1234 / fea_conv12 weight)")
        net = cls(widths_from_state_dict(sd), layout)
        _load_strict(net, sd)
        return net.eval()


_WIDE_LAYOUTS = {"rfdn": (1, 0), "b4s": (4, 3), "b2s": (2, 1), "b2": (2, 0)}  # branches, SRFDB branches


class WideNet(nn.Module):
    """The re-parametrized (wide) PRFDN, and RFDN as its one-branch case, as grouped convs.

    Mirrors prfdn-jax's ``WideNet`` and takes its conv names and PER-BRANCH widths
    (``{'fea': (3, nf), 'srfdb.c1_d': ..., 'stages.0.c5': ..., 'c': (N*sum, nc), 'LR_conv': ...,
    'upsampler': ...}``); ``layout`` is 'b4s', 'b2s', 'b2' or 'rfdn' (N = 4, 2, 2, 1 branches).
    Built so that Torch-Pruning's dependency graph sees every coupling and keeps the branches uniform:

    * ``fea``: N separate 3x3 convs on the image (``fea.<b>``); branch 0's output is also the global
      residual, added to LR_conv's output.
    * ``srfdb`` (S branches) and ``stages.<d>`` (N branches): :class:`RFDB` with ``groups``, i.e.
      grouped convs with the interleaving concat folded into a dense, block-structured ``c5``.
    * ``c``: dense 1x1 conv reading the plain concat ``[stage 0 (all branches), stage 1 (all), ...]``
      (the JAX ``c`` reads the branch-major order; the conversion permutes its input rows).
    * Only ``torch.cat`` joins tensors (no split / chunk / slicing / index_select).

    Forward: ``f_b = fea.b(x)``; ``f = cat[f_0..f_{N-S-1}, srfdb(cat[f_{N-S}..f_{N-1}])]``;
    ``s_d = stages.d(s_{d-1})`` with ``s_{-1} = f``; ``out = LR_conv(act(c(cat[s_0..]))) + f_0``;
    ``y = PixelShuffle(upsampler.0(out))``.
    """

    def __init__(self, widths: Mapping[str, tuple[int, int]], layout: str, scale: int | None = None):
        super().__init__()
        _check(layout in _WIDE_LAYOUTS, f"unknown wide layout {layout!r} (expected one of {tuple(_WIDE_LAYOUTS)})")
        n, s = _WIDE_LAYOUTS[layout]
        w = {k: (int(v[0]), int(v[1])) for k, v in widths.items()}
        for key in ("fea", "c", "LR_conv", "upsampler"):
            _check(key in w, f"WideNet: missing width entry {key!r}")
        depth = len({int(m.group(1)) for k in w if (m := re.match(r"stages\.(\d+)\.", k))})
        _check(depth >= 1, "WideNet: no stages.<d>.* widths")
        has_srfdb = any(k.startswith("srfdb.") for k in w)
        _check(has_srfdb == (s > 0), f"WideNet({layout}): SRFDB widths {'missing' if s else 'unexpected'}")
        ups_out = w["upsampler"][1]
        r = math.isqrt(ups_out // 3)
        _check(ups_out % 3 == 0 and 3 * r * r == ups_out, f"WideNet: upsampler outputs {ups_out}, not 3*r*r")
        _check(scale is None or scale == r, f"WideNet: scale {scale} but upsampler gives x{r}")
        _check(w["fea"][0] == 3, f"WideNet: fea must read the 3-channel image, got {w['fea']}")
        nf = w["fea"][1]
        self.layout, self.scale, self.branches, self.n_srfdb, self.depth = layout, r, n, s, depth
        self.fea = nn.ModuleList([_conv("fea_conv", 3, nf) for _ in range(n)])
        ch = nf
        if s:
            self.srfdb = SRFDB(_sub(w, "srfdb"), groups=s)
            _check(self.srfdb.in_channels == s * nf and self.srfdb.out_channels == s * nf,
                   f"WideNet: the SRFDB must map fea's {nf} channels per branch to {nf}")
        else:
            self.srfdb = None
        self.stages = nn.ModuleList()
        cat = 0
        for d in range(depth):
            blk = RFDB(_sub(w, f"stages.{d}"), steps=3, groups=n)
            _check(blk.in_channels == n * ch, f"WideNet: stages.{d} must read {ch} channels per branch")
            ch = blk.out_channels // n
            cat += blk.out_channels
            self.stages.append(blk)
        _check(w["c"][0] == cat, f"WideNet: c must read the {cat}-channel concat of stage outputs, got {w['c']}")
        _check(w["LR_conv"] == (w["c"][1], nf), f"WideNet: LR_conv must map c's output to fea's {nf} channels")
        _check(w["upsampler"][0] == nf, f"WideNet: upsampler must read {nf} channels")
        self.c = _conv("c.0", *w["c"])
        self.act = nn.LeakyReLU(ACT_SLOPE)
        self.LR_conv = _conv("LR_conv", *w["LR_conv"])
        self.upsampler = _upsampler(nf, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s = self.branches, self.n_srfdb
        fs = [conv(x) for conv in self.fea]
        if s:
            g = fs[n - s] if s == 1 else torch.cat(fs[n - s:], dim=1)
            parts = fs[: n - s] + [self.srfdb(g)]
        else:
            parts = fs
        f = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        outs = []
        for stage in self.stages:
            f = stage(f)
            outs.append(f)
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        out = self.LR_conv(self.act(self.c(y))) + fs[0]
        return self.upsampler(out)

    def branch_widths(self) -> Widths:
        """Per-branch ``{jax conv name: (cin, cout)}`` read from the current convs (valid after
        pruning); raises ValueError if the branches no longer have equal widths."""
        out: Widths = {}
        fea = {(c.in_channels, c.out_channels) for c in self.fea}
        _check(len(fea) == 1, f"WideNet: the first convs of the branches have different widths {sorted(fea)}")
        out["fea"] = fea.pop()
        blocks = ([("srfdb", self.srfdb)] if self.srfdb is not None else [])
        blocks += [(f"stages.{d}", b) for d, b in enumerate(self.stages)]
        for prefix, blk in blocks:
            g = blk.groups
            for name, conv in blk.named_modules():
                if isinstance(conv, nn.Conv2d):
                    _check(conv.in_channels % g == 0 and conv.out_channels % g == 0,
                           f"WideNet: {prefix}.{name} has {conv.in_channels}->{conv.out_channels} channels, "
                           f"not divisible by its {g} branches")
                    out[f"{prefix}.{name}"] = (conv.in_channels // g, conv.out_channels // g)
        out["c"] = (self.c.in_channels, self.c.out_channels)
        out["LR_conv"] = (self.LR_conv.in_channels, self.LR_conv.out_channels)
        up = self.upsampler[0]
        out["upsampler"] = (up.in_channels, up.out_channels)
        return out


# --------------------------------------------------------------------------------------------- loading

def _unwrap(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept {'params'|'state_dict'|'model': sd} wrappers and DataParallel 'module.' prefixes."""
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a state dict (mapping), got {type(sd).__name__}")
    for key in ("params", "state_dict", "model"):
        if key in sd and isinstance(sd[key], Mapping) and len(sd) == 1:
            sd = sd[key]
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _load_strict(net: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # make the multi-line torch message a one-line ValueError
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ValueError(f"{type(net).__name__}: state dict does not match: {' '.join(lines)[:500]}") from e


def _scale_from(sd: Mapping[str, torch.Tensor]) -> int:
    w = sd.get("upsampler.0.weight")
    _check(w is not None and w.ndim == 4, "state dict has no 4-D upsampler.0.weight")
    out = int(w.shape[0])
    r = math.isqrt(out // 3)
    _check(out % 3 == 0 and 3 * r * r == out, f"upsampler.0 has {out} outputs, not 3*r*r")
    return r


def build_from_state_dict(sd: Mapping[str, torch.Tensor]) -> nn.Module:
    """Recognise RFDN / branch / merged networks from keys and shapes, build, load strictly, eval()."""
    sd = _unwrap(sd)
    if MergedNet.layout_of(sd) is not None:
        return MergedNet.from_state_dict(sd)
    _check("fea_conv.weight" in sd and "B1.c1_d.weight" in sd,
           "unrecognised state dict: no fea_conv/B1 (RFDN, branch) nor fea_conv1234/fea_conv12 (merged) keys")
    nf = int(sd["fea_conv.weight"].shape[0])
    scale = _scale_from(sd)
    if "fea_conv3.weight" in sd and "B2S1.c1_d.weight" in sd:
        net: nn.Module = BranchNet("b4s", nf, scale)
    elif "fea_conv2.weight" in sd and "B2S2.c1_d.weight" in sd:
        net = BranchNet("b2s", nf, scale)
    elif "fea_conv2.weight" in sd:
        net = BranchNet("b2", nf, scale)
    else:
        n_blocks = 0
        while f"B{n_blocks + 1}.c1_d.weight" in sd:
            n_blocks += 1
        net = RFDN(nf, n_blocks, scale)
    _load_strict(net, sd)
    return net.eval()
