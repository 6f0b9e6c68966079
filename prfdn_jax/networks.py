"""RFDN and the three forms of PRFDN (branch, wide, merged), all built from :mod:`prfdn_jax.blocks`.

Every network is described by an :class:`~prfdn_jax.spec.Arch`: its form, its layout, its scale and
the width of every conv (widths as data: the same code builds unpruned, uniformly pruned and freely
pruned nets). Layouts, conv geometry and the coupling checks come from :mod:`prfdn_jax.spec`.
Input ``(B, H, W, 3)`` float in [0, 255]; output ``(B, H*s, W*s, 3)`` (not clamped).

Layouts (``spec.LAYOUTS``: branches N, branches with an SRFDB S, RFDBs per branch D):

* ``rfdn``: N=1, D=n_blocks. ``fea_conv -> B1 -> ... -> Bn``, fuse ``[B1..Bn]``. This *is* RFDN.
* ``b4s``: N=4, D=1, S=3: branch 0 ``B1(fea_conv(x))``, branch k ``B{k+1}(B2S{k}(fea_conv{k}(x)))``.
* ``b2s``: N=2, D=2, S=1: ``B2(B1(fea_conv(x)))`` and ``B4(B3(B2S2(fea_conv2(x))))``.
* ``b2``: as b2s without the SRFDB.

Fusion in all: ``out = LR_conv(act(c(concat[branch-major stage outputs]))) + fea_conv(x)``, then
``pixel_shuffle(upsampler(out), scale)``.

Forms:

* ``branch`` (:class:`BranchNet`): every layer stack has a leading branch axis;
* ``wide`` (:class:`WideNet`): the same parameters seen as one wide network of grouped convs;
* ``merged`` (:class:`MergedNet`): the PRFDN team's dense layout, concat/split as explicit 1x1 convs
  (``split_left``, ``split_right``, ``split``, ``cat_p``), any width per layer (the pruned form).

The apply path (:mod:`prfdn_jax.backends`) is set on a network once, :func:`set_impl` (in place) or
:func:`with_impl` (a view), never passed per call. Constructing a network (:func:`build`,
:func:`build_abstract`, every loader) stores the default resolved then: ``$PRFDN_IMPL`` or the backend's
measured path (never read while tracing, so a jitted program runs the path of the network it was traced for).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from prfdn_jax.backends import BRANCH_IMPLS, WIDE_IMPLS, check_impl, default_impl
from prfdn_jax.blocks import RFDB, SRFDB, Conv, act, apply_stacked, branch_slice, cat, pixel_shuffle, stacked
from prfdn_jax.spec import LAYOUTS, Arch, check_widths, default_arch, geometry, width_errors

__all__ = ["BranchNet", "WideNet", "RFDN", "MergedNet", "build", "build_abstract", "set_impl", "with_impl",
           # topology names, defined in prfdn_jax.spec
           "Arch", "LAYOUTS", "default_arch", "check_widths", "width_errors"]


def _conv(arch: Arch, name: str, rngs):
    """Conv ``name`` of ``arch``: widths from the arch, geometry from the spec."""
    k, stride, pad = geometry(name)
    return Conv(*arch.w[name], k, stride=stride, padding=pad, rngs=rngs)


class BranchNet(nnx.Module):
    """PRFDN branch network: independent parallel branches as stacks with a leading branch axis.

    ``__call__(x)`` runs the apply path in ``self.impl``: ``vmap`` (the branches as ``jax.vmap`` over
    the stack), ``sequential`` (one branch after another), a wide path (``grouped``, ``loop``,
    ``dense``); all give the same output. Construction stores the default
    (:func:`prfdn_jax.backends.default_impl`, resolved then).
    """

    def __init__(self, arch: Arch, *, rngs: nnx.Rngs):
        if arch.form == "merged":
            raise ValueError("a merged architecture is built by MergedNet")
        self.arch = arch
        n, s = arch.branches, arch.n_srfdb
        self.fea = stacked(n, lambda r: _conv(arch, "fea", r), rngs)
        self.srfdb = stacked(s, lambda r: SRFDB(arch.sub("srfdb."), rngs=r), rngs) if s else None
        self.stages = nnx.List([stacked(n, lambda r, d=d: RFDB(arch.sub(f"stages.{d}."), rngs=r), rngs)
                                for d in range(arch.depth)])
        self.c = _conv(arch, "c", rngs)
        self.LR_conv = _conv(arch, "LR_conv", rngs)
        self.upsampler = _conv(arch, "upsampler", rngs)
        self.impl: str | None = None
        set_impl(self, None)  # the default path, resolved now (not while tracing)

    @property
    def scale(self) -> int:
        return self.arch.scale

    def __call__(self, x):
        impl = self.impl
        if impl == "vmap":
            y, res = self._features_vmap(x)
        elif impl == "sequential":
            y, res = self._features_sequential(x)
        elif impl in WIDE_IMPLS:
            y, res = self._features_wide(x)
        else:
            raise ValueError(f"unknown apply path {impl!r}; choose from {', '.join(BRANCH_IMPLS + WIDE_IMPLS)}")
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

    def _features_wide(self, x):
        n, s = self.arch.branches, self.arch.n_srfdb
        f = self.fea.fanout(x)
        nf = f.shape[-1] // n
        res = f[..., :nf]
        if s:
            f = jnp.concatenate([f[..., : (n - s) * nf], self.srfdb(f[..., (n - s) * nf:])], axis=-1)
        outs = []
        for stage in self.stages:
            f = stage(f)
            outs.append(f)
        return cat(outs, groups=n), res


class WideNet(BranchNet):
    """The re-parametrized network: the branch stacks seen as one wide block of grouped convs.

    Same parameters as :class:`BranchNet`; apply paths ``grouped`` / ``loop`` / ``dense`` are exact
    and interchangeable (the backend's default is the fastest measured, see :mod:`prfdn_jax.backends`).
    The form matters for export: a wide network goes to PyTorch as grouped convs.
    """


class RFDN(BranchNet):
    """RFDN (the AIM 2020 release: no block residual): a one-branch network of ``n_blocks`` RFDBs.

    One branch: every wide path is the same plain conv.
    """

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
        self.fea = _conv(arch, "fea", rngs)
        has_srfdb = "srfdb.c5" in w
        self.split_left = _conv(arch, "split_left", rngs) if has_srfdb else None
        self.split_right = _conv(arch, "split_right", rngs) if has_srfdb else None
        self.srfdb = SRFDB(arch.sub("srfdb."), rngs=rngs) if has_srfdb else None
        self.stages = nnx.List([RFDB(arch.sub(f"stages.{d}."), rngs=rngs) for d in range(arch.depth)])
        self.cat_p = _conv(arch, "cat_p", rngs) if "cat_p" in w else None
        self.c = _conv(arch, "c", rngs)
        self.LR_conv = _conv(arch, "LR_conv", rngs)
        self.split = _conv(arch, "split", rngs)
        self.upsampler = _conv(arch, "upsampler", rngs)
        self.impl: str | None = None  # dense convs only: every path is the same
        set_impl(self, None)

    @property
    def scale(self) -> int:
        return self.arch.scale

    def __call__(self, x):
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


def set_impl(model: nnx.Module, impl: str | None) -> nnx.Module:
    """Set the apply path of ``model`` and all its convs in place; returns it.

    None: the default, resolved now (:func:`prfdn_jax.backends.default_impl`: ``$PRFDN_IMPL``, else the
    backend's). ``vmap`` and ``sequential`` are paths of a branch network as a whole; its convs then
    see plain per-branch kernels. A wide path is set on every conv.
    """
    impl = check_impl(impl) or default_impl()
    conv_impl = impl if impl in WIDE_IMPLS else None
    for _, m in nnx.iter_modules(model):
        if isinstance(m, Conv):
            m.impl = conv_impl
        elif isinstance(m, (BranchNet, MergedNet)):
            m.impl = impl
    return model


def with_impl(model: nnx.Module, impl: str | None) -> nnx.Module:
    """A view of ``model`` (same parameter arrays) with apply path ``impl``; ``model`` is unchanged."""
    return set_impl(nnx.merge(*nnx.split(model)), impl)
