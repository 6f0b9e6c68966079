"""PyTorch reference implementation of RFDN / PRFDN (NCHW activations, OIHW weights).

This module is the ground truth the JAX port is tested against, and the network Torch-Pruning runs
on. It is deliberately plain ``torch.nn``: every layer is an ``nn.Conv2d`` with a bias, concatenation
is ``torch.cat``, and in the merged (re-parametrized / pruned) form channel selection and permutation
are real 1x1 convs (``split``, ``split_left``, ``split_right``, ``cat_p``) so that a dependency-graph
pruner sees every channel coupling. ``torch.split`` / ``torch.chunk`` are never used.

The topology is the spec's (:mod:`prfdn_jax.spec`): conv geometry, layouts, standard widths, the
released key names, the channel-coupling checker and architecture detection all come from there;
the reference keeps only its own forward passes (following ``shared/docs/rfdn-prfdn-reference.md``).
Widths are data, so the same classes serve the unpruned networks and networks pruned to arbitrary
per-layer widths. The blocks live in :mod:`converters.torch_blocks`; this module has the networks
and loading, and re-exports the blocks' public names.

Public API
----------
``ESA``, ``RFDB``, ``SRFDB``, ``RFDN``, ``BranchNet``, ``MergedNet``, ``WideNet`` (grouped convs),
``esa_widths``, ``rfdb_widths``, ``merged_widths``, ``widths_from_state_dict``,
``build_from_state_dict`` (released keys, or the grouped WideNet layout), ``count_params``, ``kernel_of``,
``ACT_SLOPE``.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Mapping

import torch
from torch import nn

from converters.torch_blocks import (ACT_SLOPE, ESA, RFDB, SRFDB, _check, _conv, _raise_first, _sub, _upsampler,
                                     count_params, esa_widths, kernel_of, rfdb_widths)
from prfdn_jax import spec
from prfdn_jax.state_dict import is_wide_state_dict, unwrap_state_dict, wide_arch_from_state_dict
from prfdn_jax.spec import (LAYOUTS, Arch, Widths, block_prefix, branch_layouts, conv_table, default_arch,
                            scale_from_upsampler, width_errors)

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
    "MERGED_LAYOUTS",
]


class _BranchLayouts:
    """The layouts with more than one branch (the merged and the branch kinds), read from ``spec.LAYOUTS``
    at each use, so a layout added with ``spec.register_layout`` counts; iterates and prints as a tuple."""

    def __iter__(self):
        return iter(branch_layouts())

    def __contains__(self, name) -> bool:
        return name in branch_layouts()

    def __len__(self) -> int:
        return len(branch_layouts())

    def __repr__(self) -> str:
        return repr(branch_layouts())


MERGED_LAYOUTS = _BranchLayouts()


# --------------------------------------------------------------------------------------------- widths

def _merged_names(layout: str) -> dict[str, str]:
    """Released name (state-dict prefix) -> prfdn-jax name of every conv of the merged ``layout``."""
    return _merged_names_of(layout, LAYOUTS[layout])


@functools.lru_cache(maxsize=None)
def _merged_names_of(layout: str, lay) -> dict[str, str]:  # cached per (name, definition)
    arch = Arch.make("merged", layout, 1, spec.merged_widths(default_arch(layout, nf=4, scale=1)))
    return {prefixes[0]: name for name, prefixes in conv_table(arch)}


def merged_widths(layout: str, nf: int = 50, scale: int = 2) -> Widths:
    """Full-prefix widths of the UNPRUNED merged network (branch widths times the branch count).

    Any layout of ``spec.LAYOUTS`` with more than one branch, e.g. 'b4s': 4 branches (1 plain + 3 with
    an SRFDB); 'b2s': 2 branches of two RFDBs, SRFDB on branch 2; 'b2': as 'b2s' without the SRFDB
    (no split_left / split_right).
    """
    _check(layout in MERGED_LAYOUTS, f"unknown merged layout {layout!r} (expected one of {MERGED_LAYOUTS})")
    w = spec.merged_widths(default_arch(layout, nf=nf, scale=scale))
    return {released: w[name] for released, name in _merged_names(layout).items()}


def widths_from_state_dict(sd: Mapping[str, torch.Tensor]) -> Widths:
    """``{conv_prefix: (cin, cout)}`` for every 4-D ``<prefix>.weight`` tensor in ``sd``."""
    return {k[: -len(".weight")]: (int(v.shape[1]), int(v.shape[0]))
            for k, v in sd.items() if k.endswith(".weight") and v.ndim == 4}


def _checked_arch(form: str, layout: str, w: Widths, scale: int | None, where: str,
                  names: Mapping[str, str] | None = None) -> Arch:
    """The :class:`Arch` of ``w`` (prfdn-jax names); ValueError naming the conv that breaks a coupling."""
    _check("upsampler" in w, f"{where}architecture has no conv {(names or {}).get('upsampler', 'upsampler')!r}")
    try:
        r = scale_from_upsampler(w["upsampler"][1])
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None
    _check(scale is None or scale == r, f"{where}scale {scale} but the upsampler gives x{r}")
    arch = Arch.make(form, layout, r, w)
    _raise_first(width_errors(arch), where, names)
    return arch


# --------------------------------------------------------------------------------------------- networks

class _Released(nn.Module):
    """A branch-form network with the released key names, its layers built from the spec's key table."""

    def _build(self, arch: Arch) -> None:
        w, depth = arch.w, arch.depth
        for p in dict(conv_table(arch))["fea"]:
            setattr(self, p, _conv(p, *w["fea"]))
        blocks = sorted(((p, f"stages.{d}") for d in range(depth)
                         for p in block_prefix(f"stages.{d}", arch.layout, depth, False)), key=lambda t: int(t[0][1:]))
        if arch.n_srfdb:
            blocks += [(p, "srfdb") for p in block_prefix("srfdb", arch.layout, depth, False)]
        for p, part in blocks:
            setattr(self, p, (SRFDB if part == "srfdb" else RFDB)(arch.sub(part + ".")))
        self.c = nn.Sequential(_conv("c.0", *w["c"]), nn.LeakyReLU(ACT_SLOPE))
        self.LR_conv = _conv("LR_conv", *w["LR_conv"])
        self.upsampler = _upsampler(w["upsampler"][0], arch.scale)


class RFDN(_Released):
    """RFDN as released for AIM 2020 (nf=50, 4 blocks, x4); any nf / n_blocks / scale."""

    def __init__(self, nf: int = 50, n_blocks: int = 4, scale: int = 4):
        super().__init__()
        self.nf, self.n_blocks, self.scale = nf, n_blocks, scale
        self._build(default_arch("rfdn", nf=nf, scale=scale, n_blocks=n_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fea_conv(x)
        outs = []
        b = f
        for i in range(1, self.n_blocks + 1):
            b = getattr(self, f"B{i}")(b)
            outs.append(b)
        out = self.LR_conv(self.c(torch.cat(outs, dim=1))) + f
        return self.upsampler(out)


class BranchNet(_Released):
    """PRFDN branch models before re-parametrization: any layout ``kind`` of ``spec.LAYOUTS`` with more
    than one branch ('b4s', 'b2s', 'b2', ...; see the reference doc).

    Branch b: ``fea_conv{b*D}`` (``fea_conv`` for b = 0) on the image, then ``B2S{b*D}`` for the last S
    branches, then its D RFDBs ``B{b*D+1} .. B{b*D+D}``; every RFDB output joins the concat before
    ``c`` (branch-major); branch 0's first features are the global residual.
    """

    def __init__(self, kind: str, nf: int = 50, scale: int = 4):
        super().__init__()
        _check(kind in MERGED_LAYOUTS, f"unknown branch kind {kind!r} (expected one of {MERGED_LAYOUTS})")
        self.kind, self.nf, self.scale = kind, nf, scale
        arch = default_arch(kind, nf=nf, scale=scale)
        self._build(arch)
        n, s, depth = arch.branches, arch.n_srfdb, arch.depth
        fea = dict(conv_table(arch))["fea"]
        srfdb = block_prefix("srfdb", kind, depth, False) if s else []
        stages = [block_prefix(f"stages.{d}", kind, depth, False) for d in range(depth)]
        # per branch: (first conv, SRFDB or None, [RFDB per stage]), module names
        self._paths = [(fea[b], srfdb[b - (n - s)] if b >= n - s else None, [st[b] for st in stages])
                       for b in range(n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, res = [], None
        for fea, srfdb, stages in self._paths:
            g = getattr(self, fea)(x)
            res = g if res is None else res
            if srfdb is not None:
                g = getattr(self, srfdb)(g)
            for name in stages:
                g = getattr(self, name)(g)
                outs.append(g)
        out = self.LR_conv(self.c(torch.cat(outs, dim=1))) + res
        return self.upsampler(out)


class MergedNet(nn.Module):
    """Dense merged / pruned PRFDN (the team's "RFDNB4S_P" x2 and "RFDNB2S_P" x3 layouts).

    ``widths`` is keyed by each conv's full state-dict prefix (e.g. 'B1234.esa.conv1': (23, 5)), so
    ``widths_from_state_dict(net.state_dict()) == net.widths``; the convs are those of the spec's merged
    form (:func:`prfdn_jax.spec.merged_widths`). The input is repeated ``fea_conv{...}.cin // 3`` times
    along channels before the first conv (any number of copies; the spec's merged form has N).

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
        _check(layout in MERGED_LAYOUTS, f"unknown merged layout {layout!r} (expected one of {MERGED_LAYOUTS})")
        where = f"MergedNet({layout}): "
        w = {k: (int(v[0]), int(v[1])) for k, v in widths.items()}
        names = _merged_names(layout)
        _check(not set(w) - set(names), f"{where}unexpected width entries {sorted(set(w) - set(names))}")
        _check(not set(names) - set(w), f"{where}missing width entries {sorted(set(names) - set(w))}")
        lay = LAYOUTS[layout]
        released = {v: k for k, v in names.items()}
        first = released["fea"]
        cin0, nfeat = w[first]
        _check(cin0 % 3 == 0 and cin0 > 0, f"{where}{first} must read 3*k channels, got {cin0}")
        jw = {names[k]: v for k, v in w.items()}
        jw["fea"] = (3 * lay.branches, nfeat)  # the spec's merged form has N input copies; any k works here
        arch = _checked_arch("merged", layout, jw, scale, where, released)
        depth = arch.depth
        skey = block_prefix("srfdb", layout, depth, True)[0] if lay.srfdb else None
        rkeys = tuple(block_prefix(f"stages.{d}", layout, depth, True)[0] for d in range(depth))
        self.n_copies = cin0 // 3
        self.layout, self.scale = layout, arch.scale
        setattr(self, first, _conv(first, cin0, nfeat))
        if skey is not None:
            self.split_left = _conv("split_left", *w["split_left"])
            self.split_right = _conv("split_right", *w["split_right"])
            setattr(self, skey, SRFDB(_sub(w, skey)))
        for k in rkeys:
            setattr(self, k, RFDB(_sub(w, k), steps=3))
        self.cat_p = _conv("cat_p", *w["cat_p"]) if "cat_p" in w else None
        self.c = nn.Sequential(_conv("c.0", *w["c.0"]), nn.LeakyReLU(ACT_SLOPE))
        self.LR_conv = _conv("LR_conv", *w["LR_conv"])
        self.split = _conv("split", *w["split"])
        self.upsampler = _upsampler(w["upsampler.0"][0], arch.scale)
        self.widths = w
        self._first, self._skey, self._rkeys = first, skey, rkeys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xin = torch.cat([x] * self.n_copies, dim=1) if self.n_copies > 1 else x
        f = getattr(self, self._first)(xin)
        if self._skey is not None:
            f = torch.cat([self.split_left(f), getattr(self, self._skey)(self.split_right(f))], dim=1)
        b, outs = f, []
        for k in self._rkeys:
            b = getattr(self, k)(b)
            outs.append(b)
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if self.cat_p is not None:
            y = self.cat_p(y)
        out = self.LR_conv(self.c(y)) + self.split(f)
        return self.upsampler(out)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> "MergedNet":
        """Build from a merged checkpoint's tensor shapes and load it strictly (eval mode)."""
        sd = unwrap_state_dict(sd)[0]
        arch = _detect(sd)
        _check(arch.form == "merged", "not a merged PRFDN state dict (no fea_conv1234 / fea_conv12 weight)")
        net = cls(widths_from_state_dict(sd), arch.layout)
        _load_strict(net, sd)
        return net.eval()


class WideNet(nn.Module):
    """The re-parametrized (wide) PRFDN, and RFDN as its one-branch case, as grouped convs.

    Mirrors prfdn-jax's ``WideNet`` and takes its conv names and PER-BRANCH widths
    (``{'fea': (3, nf), 'srfdb.c1_d': ..., 'stages.0.c5': ..., 'c': (N*sum, nc), 'LR_conv': ...,
    'upsampler': ...}``); ``layout`` is any of ``spec.LAYOUTS`` ('b4s', 'b2s', 'b2', 'rfdn': N = 4, 2, 2, 1).
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
        _check(layout in LAYOUTS, f"unknown wide layout {layout!r} (expected one of {tuple(LAYOUTS)})")
        where = f"WideNet({layout}): "
        n, s, _ = LAYOUTS[layout]
        w = {k: (int(v[0]), int(v[1])) for k, v in widths.items()}
        has_srfdb = any(k.startswith("srfdb.") for k in w)
        _check(has_srfdb == (s > 0), f"{where}SRFDB widths {'missing' if s else 'unexpected'}")
        arch = _checked_arch("wide", layout, w, scale, where)
        nf, depth = w["fea"][1], arch.depth
        self.layout, self.scale, self.branches, self.n_srfdb, self.depth = layout, arch.scale, n, s, depth
        self.fea = nn.ModuleList([_conv("fea", *w["fea"]) for _ in range(n)])
        self.srfdb = SRFDB(arch.sub("srfdb."), groups=s) if s else None
        self.stages = nn.ModuleList([RFDB(arch.sub(f"stages.{d}."), steps=3, groups=n) for d in range(depth)])
        self.c = _conv("c", *w["c"])
        self.act = nn.LeakyReLU(ACT_SLOPE)
        self.LR_conv = _conv("LR_conv", *w["LR_conv"])
        self.upsampler = _upsampler(nf, arch.scale)

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
            out.update({f"{prefix}.{k}": v for k, v in blk.branch_widths(prefix + ".").items()})
        out["c"] = (self.c.in_channels, self.c.out_channels)
        out["LR_conv"] = (self.LR_conv.in_channels, self.LR_conv.out_channels)
        up = self.upsampler[0]
        out["upsampler"] = (up.in_channels, up.out_channels)
        return out


# --------------------------------------------------------------------------------------------- loading

def _load_strict(net: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # make the multi-line torch message a one-line ValueError
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ValueError(f"{type(net).__name__}: state dict does not match: {' '.join(lines)[:500]}") from e


def _detect(sd: Mapping[str, torch.Tensor]) -> Arch:
    """The spec's :func:`~prfdn_jax.spec.arch_from_state_dict` of ``sd`` (a :class:`StateDictError`,
    i.e. ValueError, if unrecognised); a merged net may repeat its input any number k of times."""
    shapes = {k: types.SimpleNamespace(shape=tuple(v.shape)) for k, v in sd.items() if hasattr(v, "shape")}
    for k, v in shapes.items():
        m = re.fullmatch(r"fea_conv(\d{2,})\.weight", k)
        if m and len(v.shape) == 4 and v.shape[1] % 3 == 0 and v.shape[1] > 0:
            v.shape = (v.shape[0], 3 * len(m.group(1)), *v.shape[2:])
    return spec.arch_from_state_dict(shapes)


def build_from_state_dict(sd: Mapping[str, torch.Tensor]) -> nn.Module:
    """Recognise RFDN / branch / merged networks from keys and shapes, build, load strictly, eval().

    The grouped-conv layout of :class:`WideNet` (``fea.<b>``, ``srfdb.*``, ``stages.<d>.*``: what
    ``prfdn export --format torch`` writes for a wide network) is recognised too
    (:func:`prfdn_jax.state_dict.wide_arch_from_state_dict`) and gives a :class:`WideNet`.
    """
    sd = unwrap_state_dict(sd)[0]
    if is_wide_state_dict(sd):
        arch = wide_arch_from_state_dict(sd)
        wide = WideNet(arch.w, arch.layout, arch.scale)
        _load_strict(wide, sd)
        return wide.eval()
    arch = _detect(sd)
    if arch.form == "merged":
        net: nn.Module = MergedNet(widths_from_state_dict(sd), arch.layout)
    elif arch.layout == "rfdn":
        net = RFDN(arch.w["fea"][1], arch.depth, arch.scale)
    else:
        net = BranchNet(arch.layout, arch.w["fea"][1], arch.scale)
    _load_strict(net, sd)
    return net.eval()
