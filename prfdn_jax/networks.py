"""RFDN and the three forms of PRFDN (branch, wide, merged), all built from :mod:`prfdn_jax.blocks`.

Every network is described by an :class:`Arch`: its form, its layout, its scale and the width of
every conv (widths as data: the same code builds unpruned, uniformly pruned and freely pruned nets).
Input ``(B, H, W, 3)`` float in [0, 255]; output ``(B, H*s, W*s, 3)`` (not clamped).

Layouts (``LAYOUTS``: branches N, branches with an SRFDB S; depth D = RFDBs per branch, from widths):

* ``rfdn``: N=1, D=n_blocks. ``fea_conv -> B1 -> ... -> Bn``, fuse ``[B1..Bn]``. This *is* RFDN.
* ``b4s``: N=4, D=1, S=3: branch 0 ``B1(fea_conv(x))``, branch k ``B{k+1}(B2S{k}(fea_conv{k}(x)))``.
* ``b2s``: N=2, D=2, S=1: ``B2(B1(fea_conv(x)))`` and ``B4(B3(B2S2(fea_conv2(x))))``.
* ``b2``: as b2s without the SRFDB.

Fusion in all: ``out = LR_conv(act(c(concat[branch-major stage outputs]))) + fea_conv(x)``, then
``pixel_shuffle(upsampler(out), scale)``.

Forms:

* ``branch`` (:class:`BranchNet`): every layer stack has a leading branch axis, applied with
  ``nnx.vmap`` (or ``sequential``: one branch at a time, for tests);
* ``wide`` (:class:`WideNet`): the same parameters seen as one wide network of grouped convs;
* ``merged`` (:class:`MergedNet`): the PRFDN team's dense layout, concat/split as explicit 1x1 convs
  (``split_left``, ``split_right``, ``split``, ``cat_p``), any width per layer (the pruned form).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping

import jax.numpy as jnp
from flax import nnx

from prfdn_jax.blocks import (WIDE_IMPLS, RFDB, SRFDB, Conv, act, apply_stacked, branch_slice, cat,
                              pixel_shuffle, rfdb_widths, stacked)

LAYOUTS = {"rfdn": (1, 0), "b4s": (4, 3), "b2s": (2, 1), "b2": (2, 0)}
FORMS = ("branch", "wide", "merged")
# The default apply path of branch and wide networks, chosen with `python -m prfdn_jax.bench paths`
# (BENCHMARKS.md): on XLA CPU a loop of per-branch convs was 2.3x faster forward and 16x faster
# forward+backward than one grouped conv (which is also what jax.vmap lowers to). All paths are exact.
DEFAULT_WIDE_IMPL = "loop"


@dataclasses.dataclass(frozen=True)
class Arch:
    """Architecture as data. ``widths`` maps conv names to ``(cin, cout)`` (per branch when stacked).

    Conv names: ``fea``, ``srfdb.<conv>``, ``stages.<d>.<conv>``, ``c``, ``LR_conv``, ``upsampler``;
    merged nets add ``split_left``, ``split_right``, ``split`` and ``cat_p``. Block convs are named as
    in the released checkpoints (``c1_d``, ``esa.conv1``, ...).
    """

    form: str
    layout: str
    scale: int
    widths: tuple[tuple[str, tuple[int, int]], ...]

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"unknown form {self.form!r}; expected one of {FORMS}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {tuple(LAYOUTS)}")

    @classmethod
    def make(cls, form: str, layout: str, scale: int, widths: Mapping[str, tuple[int, int]]) -> "Arch":
        return cls(form, layout, int(scale), tuple(sorted((k, (int(a), int(b))) for k, (a, b) in widths.items())))

    @property
    def w(self) -> dict[str, tuple[int, int]]:
        return dict(self.widths)

    def sub(self, prefix: str) -> dict[str, tuple[int, int]]:
        """Widths of the block under ``prefix`` (e.g. ``stages.0.``), keys relative to it."""
        return {k[len(prefix):]: v for k, v in self.widths if k.startswith(prefix)}

    @property
    def branches(self) -> int:
        """N: parallel branches (merged form: input copies of the first conv)."""
        return LAYOUTS[self.layout][0]

    @property
    def n_srfdb(self) -> int:
        return LAYOUTS[self.layout][1] if any(k.startswith("srfdb.") for k, _ in self.widths) else 0

    @property
    def depth(self) -> int:
        return len({int(m.group(1)) for k, _ in self.widths if (m := re.match(r"stages\.(\d+)\.", k))})

    @property
    def nf(self) -> int:
        return self.w["LR_conv"][1]

    def replace(self, **kw) -> "Arch":
        return dataclasses.replace(self, **kw)

    def to_json(self) -> str:
        return json.dumps({"form": self.form, "layout": self.layout, "scale": self.scale,
                           "widths": {k: list(v) for k, v in self.widths}})

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        d = json.loads(text)
        return cls.make(d["form"], d["layout"], d["scale"], {k: tuple(v) for k, v in d["widths"].items()})


def default_arch(layout: str, *, nf: int = 50, scale: int = 4, n_blocks: int | None = None,
                 form: str = "branch") -> Arch:
    """Unpruned branch/wide architecture: nf channels, D = n_blocks (rfdn) or 1 (b4s) or 2 (b2s, b2)."""
    n, s = LAYOUTS[layout]
    depth = {"rfdn": n_blocks or 4, "b4s": 1, "b2s": 2, "b2": 2}[layout]
    w: dict[str, tuple[int, int]] = {"fea": (3, nf)}
    if s:
        w.update({f"srfdb.{k}": v for k, v in rfdb_widths(nf, 1).items()})
    for d in range(depth):
        w.update({f"stages.{d}.{k}": v for k, v in rfdb_widths(nf, 3).items()})
    w.update({"c": (n * depth * nf, nf), "LR_conv": (nf, nf), "upsampler": (nf, 3 * scale * scale)})
    return Arch.make(form, layout, scale, w)


def _block_errors(w: Mapping[str, tuple[int, int]], p: str, n_in: int, errs: list) -> int:
    """Check one RFDB/SRFDB's couplings (convs under prefix ``p``); returns its output width."""

    def need(name, side, expected):
        actual = w[p + name][0 if side == "in" else 1]
        if actual != expected:
            errs.append((p + name, side, expected, actual))

    steps = sum(1 for k in w if re.fullmatch(re.escape(p) + r"c\d+_r", k))
    for i in range(1, steps + 1):
        need(f"c{i}_d", "in", n_in)
        need(f"c{i}_r", "in", n_in)
        need(f"c{i}_r", "out", n_in)
    need("c4", "in", n_in)
    cat_w = sum(w[f"{p}c{i}_d"][1] for i in range(1, steps + 1)) + w[p + "c4"][1]
    if p + "cat_p" in w:
        need("cat_p", "in", cat_w)
        cat_w = w[p + "cat_p"][1]
    need("c5", "in", cat_w)
    n_out = w[p + "c5"][1]
    e = lambda k: w[p + "esa." + k]  # noqa: E731
    need("esa.conv1", "in", n_out)
    need("esa.conv_f", "in", e("conv1")[1])
    need("esa.conv2", "in", e("conv1")[1])
    need("esa.conv_max", "in", e("conv2")[1])
    need("esa.conv3", "in", e("conv_max")[1])
    need("esa.conv3_", "in", e("conv3")[1])
    need("esa.conv_f", "out", e("conv3_")[1])
    need("esa.conv4", "in", e("conv3_")[1])
    need("esa.conv4", "out", n_out)
    return n_out


def width_errors(arch: Arch) -> list[tuple[str, str, int, int]]:
    """Channel couplings that ``arch``'s widths break: ``[(conv, 'in'|'out', expected, actual)]``."""
    w, errs = arch.w, []

    def need(name, side, expected):
        actual = w[name][0 if side == "in" else 1]
        if actual != expected:
            errs.append((name, side, expected, actual))

    try:
        n = arch.branches
        if arch.form == "merged":
            need("fea", "in", 3 * n)
            f_w = w["fea"][1]
            if "srfdb.c5" in w:
                need("split_left", "in", f_w)
                need("split_right", "in", f_w)
                f_w = w["split_left"][1] + _block_errors(w, "srfdb.", w["split_right"][1], errs)
            b, outs = f_w, []
            for d in range(arch.depth):
                b = _block_errors(w, f"stages.{d}.", b, errs)
                outs.append(b)
            cat_w = sum(outs)
            if "cat_p" in w:
                need("cat_p", "in", cat_w)
                cat_w = w["cat_p"][1]
            need("c", "in", cat_w)
            need("split", "in", f_w)
            need("split", "out", w["LR_conv"][1])
        else:
            need("fea", "in", 3)
            nf = w["fea"][1]
            if arch.n_srfdb:
                need_out = _block_errors(w, "srfdb.", nf, errs)
                if need_out != nf:
                    errs.append(("srfdb.c5", "out", nf, need_out))
            b, outs = nf, []
            for d in range(arch.depth):
                b = _block_errors(w, f"stages.{d}.", b, errs)
                outs.append(b)
            need("c", "in", n * sum(outs))
            need("LR_conv", "out", nf)
        need("LR_conv", "in", w["c"][1])
        need("upsampler", "in", w["LR_conv"][1])
        need("upsampler", "out", 3 * arch.scale * arch.scale)
    except KeyError as k:
        errs.append((str(k).strip("'"), "missing", 0, 0))
    return errs


def check_widths(arch: Arch) -> None:
    """Raise ValueError on the first broken channel coupling, naming the conv."""
    errs = width_errors(arch)
    if errs:
        name, side, exp, act_ = errs[0]
        if side == "missing":
            raise ValueError(f"architecture has no conv {name!r}")
        raise ValueError(f"inconsistent widths: {name} has {act_} {side}put channels, its neighbours need {exp}")


def _conv(arch: Arch, name: str, k: int, rngs):
    return Conv(*arch.w[name], k, rngs=rngs)


class BranchNet(nnx.Module):
    """PRFDN branch network: independent parallel branches as stacks with a leading branch axis.

    ``__call__(x, impl)``: ``impl`` is ``vmap`` (the branches as ``jax.vmap`` over the stack),
    ``sequential`` (one branch after another), or a wide path (``grouped``, ``loop``, ``dense``); all
    give the same output. The default is the fastest measured, ``DEFAULT_WIDE_IMPL``.
    """

    default_impl = DEFAULT_WIDE_IMPL

    def __init__(self, arch: Arch, *, rngs: nnx.Rngs):
        if arch.form == "merged":
            raise ValueError("a merged architecture is built by MergedNet")
        self.arch = arch
        n, s, w = arch.branches, arch.n_srfdb, arch.w
        self.fea = stacked(n, lambda r: _conv(arch, "fea", 3, r), rngs)
        self.srfdb = stacked(s, lambda r: SRFDB(arch.sub("srfdb."), rngs=r), rngs) if s else None
        self.stages = nnx.List([stacked(n, lambda r, d=d: RFDB(arch.sub(f"stages.{d}."), rngs=r), rngs)
                                for d in range(arch.depth)])
        self.c = Conv(*w["c"], 1, rngs=rngs)
        self.LR_conv = Conv(*w["LR_conv"], 3, rngs=rngs)
        self.upsampler = Conv(*w["upsampler"], 3, rngs=rngs)

    @property
    def scale(self) -> int:
        return self.arch.scale

    def __call__(self, x, impl: str | None = None):
        impl = impl or self.default_impl
        if impl == "vmap":
            y, res = self._features_vmap(x)
        elif impl == "sequential":
            y, res = self._features_sequential(x)
        elif impl in WIDE_IMPLS:
            y, res = self._features_wide(x, impl)
        else:
            raise ValueError(f"unknown apply path {impl!r}; choose from vmap, sequential, {', '.join(WIDE_IMPLS)}")
        out = self.LR_conv(act(self.c(y))) + res
        return pixel_shuffle(self.upsampler(out), self.scale)

    # Each feature path returns (branch-major concat of every stage output, global residual).
    def _features_vmap(self, x):
        n, s = self.arch.branches, self.arch.n_srfdb
        f = apply_stacked(self.fea, jnp.broadcast_to(x, (n, *x.shape)))
        res = f[0]
        if s:
            f = jnp.concatenate([f[: n - s], apply_stacked(self.srfdb, f[n - s:])], axis=0)
        outs = []
        for stage in self.stages:
            f = apply_stacked(stage, f)
            outs.append(f)
        y = jnp.concatenate(outs, axis=-1)  # (N, B, H, W, sum C_d) -> (B, H, W, N * sum C_d)
        return y.transpose(1, 2, 3, 0, 4).reshape(*y.shape[1:4], -1), res

    def _features_sequential(self, x):
        n, s = self.arch.branches, self.arch.n_srfdb
        outs, res = [], None
        for b in range(n):
            f = branch_slice(self.fea, b)(x)
            res = f if b == 0 else res
            if b >= n - s:
                f = branch_slice(self.srfdb, b - (n - s))(f)
            for stage in self.stages:
                f = branch_slice(stage, b)(f)
                outs.append(f)
        return jnp.concatenate(outs, axis=-1), res

    def _features_wide(self, x, impl):
        n, s = self.arch.branches, self.arch.n_srfdb
        f = self.fea.fanout(x)
        nf = f.shape[-1] // n
        res = f[..., :nf]
        if s:
            f = jnp.concatenate([f[..., : (n - s) * nf], self.srfdb(f[..., (n - s) * nf:], impl)], axis=-1)
        outs = []
        for stage in self.stages:
            f = stage(f, impl)
            outs.append(f)
        return cat(outs, groups=n), res


class WideNet(BranchNet):
    """The re-parametrized network: the branch stacks seen as one wide block of grouped convs.

    Same parameters as :class:`BranchNet`; apply paths ``grouped`` / ``loop`` / ``dense`` are exact
    and interchangeable (``DEFAULT_WIDE_IMPL`` is the fastest, measured by ``prfdn_jax.bench``). The form
    matters for export: a wide network goes to PyTorch as grouped convs.
    """


class RFDN(BranchNet):
    """RFDN (the AIM 2020 release: no block residual): a one-branch network of ``n_blocks`` RFDBs."""

    default_impl = "grouped"  # one branch: every path is a plain conv

    def __init__(self, nf: int = 50, n_blocks: int = 4, scale: int = 4, *, arch: Arch | None = None,
                 rngs: nnx.Rngs):
        super().__init__(arch or default_arch("rfdn", nf=nf, scale=scale, n_blocks=n_blocks), rngs=rngs)


class MergedNet(nnx.Module):
    """The dense merged/pruned PRFDN layout (released ``prfdn_x2_pruned`` / ``prfdn_x3_pruned``).

    ``f = fea(concat[x] * N)``; ``f = concat[split_left(f), srfdb(split_right(f))]``;
    stages ``b_d = RFDB_d(b_{d-1})`` (each with its ``cat_p``); ``y = [cat_p](concat[b_1..b_D])``;
    ``out = LR_conv(act(c(y))) + split(f)``; ``pixel_shuffle(upsampler(out), scale)``.
    """

    def __init__(self, arch: Arch, *, rngs: nnx.Rngs):
        if arch.form != "merged":
            raise ValueError("MergedNet needs a merged architecture")
        self.arch = arch
        w = arch.w
        self.fea = _conv(arch, "fea", 3, rngs)
        has_srfdb = "srfdb.c5" in w
        self.split_left = _conv(arch, "split_left", 1, rngs) if has_srfdb else None
        self.split_right = _conv(arch, "split_right", 1, rngs) if has_srfdb else None
        self.srfdb = SRFDB(arch.sub("srfdb."), rngs=rngs) if has_srfdb else None
        self.stages = nnx.List([RFDB(arch.sub(f"stages.{d}."), rngs=rngs) for d in range(arch.depth)])
        self.cat_p = _conv(arch, "cat_p", 1, rngs) if "cat_p" in w else None
        self.c = _conv(arch, "c", 1, rngs)
        self.LR_conv = _conv(arch, "LR_conv", 3, rngs)
        self.split = _conv(arch, "split", 1, rngs)
        self.upsampler = _conv(arch, "upsampler", 3, rngs)

    @property
    def scale(self) -> int:
        return self.arch.scale

    def __call__(self, x, impl: str | None = None):
        del impl  # dense convs only: every path is the same
        f = self.fea(jnp.concatenate([x] * self.arch.branches, axis=-1))
        if self.srfdb is not None:
            f = jnp.concatenate([self.split_left(f), self.srfdb(self.split_right(f))], axis=-1)
        outs, b = [], f
        for stage in self.stages:
            b = stage(b)
            outs.append(b)
        y = jnp.concatenate(outs, axis=-1)
        if self.cat_p is not None:
            y = self.cat_p(y)
        out = self.LR_conv(act(self.c(y))) + self.split(f)
        return pixel_shuffle(self.upsampler(out), self.scale)


def build(arch: Arch, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The network for ``arch`` (randomly initialised with PyTorch's default init)."""
    check_widths(arch)
    return _construct(arch, rngs or nnx.Rngs(0))


def _construct(arch: Arch, rngs: nnx.Rngs) -> nnx.Module:
    if arch.form == "merged":
        return MergedNet(arch, rngs=rngs)
    if arch.layout == "rfdn":
        return RFDN(arch=arch, rngs=rngs)
    return (WideNet if arch.form == "wide" else BranchNet)(arch, rngs=rngs)


def build_abstract(arch: Arch) -> nnx.Module:
    """Shape-only network (no allocation), to be filled with ``nnx.update``."""
    check_widths(arch)
    return nnx.eval_shape(lambda: _construct(arch, nnx.Rngs(0)))

