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
``ESA``, ``RFDB``, ``SRFDB``, ``RFDN``, ``BranchNet``, ``MergedNet``,
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


def _conv(name: str, cin: int, cout: int) -> nn.Conv2d:
    k, s, p = kernel_of(name)
    return nn.Conv2d(int(cin), int(cout), k, stride=s, padding=p, bias=True)


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

    'b4s': 4 branches (1 plain + 3 with an SRFDB); 'b2s': 2 branches of two RFDBs, SRFDB on branch 2.
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
    raise ValueError(f"unknown merged layout {layout!r} (expected 'b4s' or 'b2s')")


def widths_from_state_dict(sd: Mapping[str, torch.Tensor]) -> Widths:
    """``{conv_prefix: (cin, cout)}`` for every 4-D ``<prefix>.weight`` tensor in ``sd``."""
    return {k[: -len(".weight")]: (int(v.shape[1]), int(v.shape[0]))
            for k, v in sd.items() if k.endswith(".weight") and v.ndim == 4}


# --------------------------------------------------------------------------------------------- blocks

class ESA(nn.Module):
    """Enhanced spatial attention. ``widths``: dict over conv1, conv_f, conv_max, conv2, conv3, conv3_,
    conv4 (an 'esa.' prefix on the keys is accepted), or an int n for the standard f = n // 4 block."""

    def __init__(self, widths: Mapping[str, tuple[int, int]] | int):
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
        self.in_channels = self.out_channels = w["conv1"][0]
        for name in _ESA_NAMES:
            setattr(self, name, _conv(f"esa.{name}", *w[name]))
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
    """

    def __init__(self, widths: Mapping[str, tuple[int, int]] | int, steps: int | None = None,
                 cat_p: bool = False):
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

        self.widths = w
        self.steps = steps
        self.in_channels = n
        self.out_channels = w["c5"][1]
        for i in range(1, steps + 1):
            setattr(self, f"c{i}_d", _conv(f"c{i}_d", *w[f"c{i}_d"]))
            setattr(self, f"c{i}_r", _conv(f"c{i}_r", *w[f"c{i}_r"]))
        self.c4 = _conv("c4", *w["c4"])
        self.c5 = _conv("c5", *w["c5"])
        self.act = nn.LeakyReLU(ACT_SLOPE)
        self.esa = ESA(_sub(w, "esa"))
        self.cat_p = _conv("cat_p", *w["cat_p"]) if has_cat_p else None

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

    def __init__(self, widths: Mapping[str, tuple[int, int]] | int, cat_p: bool = False):
        super().__init__(widths, steps=1, cat_p=cat_p)


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
    """

    def __init__(self, widths: Mapping[str, tuple[int, int]], layout: str, scale: int | None = None):
        super().__init__()
        _check(layout in _MERGED, f"unknown merged layout {layout!r} (expected one of {tuple(_MERGED)})")
        first, skey, rkeys, s_cat_p, m_cat_p = _MERGED[layout]
        w = {k: (int(v[0]), int(v[1])) for k, v in widths.items()}
        top = {first, "split_left", "split_right", "split", "c.0", "LR_conv", "upsampler.0"}
        if m_cat_p:
            top.add("cat_p")
        blocks = (skey, *rkeys)
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

        sw = _sub(w, skey)
        _check("cat_p" not in sw if not s_cat_p else "cat_p" in sw,
               f"MergedNet({layout}): {skey} must {'' if s_cat_p else 'not '}have cat_p")
        _check(w["split_left"][0] == nfeat and w["split_right"][0] == nfeat,
               f"MergedNet: split_left/split_right must read {first}'s {nfeat} channels")
        _check(sw.get("c1_r", (None,))[0] == w["split_right"][1],
               f"MergedNet: {skey} must read split_right's {w['split_right'][1]} channels")
        self.n_copies = cin0 // 3
        self.layout, self.scale = layout, r
        setattr(self, first, _conv(first, cin0, nfeat))
        self.split_left = _conv("split_left", *w["split_left"])
        self.split_right = _conv("split_right", *w["split_right"])
        setattr(self, skey, SRFDB(sw))
        g = w["split_left"][1] + getattr(self, skey).out_channels
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
        for layout, (first, *_rest) in _MERGED.items():
            if f"{first}.weight" in sd:
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
