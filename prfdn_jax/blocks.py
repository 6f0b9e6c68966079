"""Building blocks of RFDN/PRFDN: Conv, ESA, RFDB and SRFDB. Activations are NHWC.

Every block is defined once, with its widths as data (``{conv name: (cin, cout)}``) and its conv
geometry from :mod:`prfdn_jax.spec`. The same code serves four forms of a network:

* plain (RFDN, merged/pruned PRFDN): kernels are ``(k, k, cin, cout)``;
* branch: a stack of N identical blocks; every kernel has a leading branch axis
  ``(N, k, k, cin, cout)``; under ``jax.vmap`` (activations ``(N, B, H, W, C)``) each conv again sees
  a plain 4-D kernel;
* wide (re-parametrized): the *same* stacked parameters applied to branch-major activations
  ``(B, H, W, N*C)``; each conv is then one conv over all branches, computed by the apply path set on
  the conv (:mod:`prfdn_jax.backends`: ``grouped``, ``loop`` or ``dense``). Networks store a resolved
  path on every conv when built; a conv left at None (a block used on its own) takes the backend's
  default while tracing.

Multiply-accumulates are counted while tracing when a :func:`count_macs` context is active.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax.backends import WIDE_IMPLS, check_impl, default_impl
from prfdn_jax.spec import ESA_CONVS, LRELU_SLOPE, block_steps, geometry

# ----------------------------------------------------------------------------- MAC counting
_MACS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("prfdn_macs", default=None)


@contextlib.contextmanager
def count_macs():
    """Collect MACs by the NTIRE organisers' definition while a forward pass is traced.

    Yields a dict with ``conv`` (k*k*(Cin/groups)*Cout*Hout*Wout per conv) and ``act`` (one per
    output element of every ReLU/LeakyReLU application). Trace with a wide path, not under vmap.
    """
    counts = {"conv": 0, "act": 0}
    token = _MACS.set(counts)
    try:
        yield counts
    finally:
        _MACS.reset(token)


def _add_macs(kind: str, n: int) -> None:
    counts = _MACS.get()
    if counts is not None:
        counts[kind] += int(n)


def act(x):
    """LeakyReLU(0.05), the RFDN activation."""
    _add_macs("act", math.prod(x.shape))
    return jax.nn.leaky_relu(x, LRELU_SLOPE)


def relu(x):
    _add_macs("act", math.prod(x.shape))
    return jax.nn.relu(x)


# ----------------------------------------------------------------------------- layout helpers
def cat(xs, groups: int = 1):
    """Concatenate NHWC tensors channel-wise, keeping branch-major order for ``groups`` branches.

    Each input is ``(B, H, W, groups*c_i)``; the result is ``(B, H, W, groups*sum(c_i))`` with branch
    g's channels ``[x0_g, x1_g, ...]`` contiguous (what each branch's next conv expects).
    """
    if groups == 1:
        return jnp.concatenate(xs, axis=-1)
    parts = [x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups) for x in xs]
    y = jnp.concatenate(parts, axis=-1)
    return y.reshape(*y.shape[:-2], -1)


def pixel_shuffle(x, r: int):
    """PyTorch PixelShuffle in NHWC: ``(B, H, W, C*r*r) -> (B, H*r, W*r, C)``, PyTorch channel order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def fold_grouped(k):
    """Stacked kernel ``(N, kh, kw, ci, co)`` -> grouped HWIO kernel ``(kh, kw, ci, N*co)``."""
    n, kh, kw, ci, co = k.shape
    return k.transpose(1, 2, 3, 0, 4).reshape(kh, kw, ci, n * co)


def block_diagonal(k):
    """Stacked kernel ``(N, kh, kw, ci, co)`` -> dense block-diagonal ``(kh, kw, N*ci, N*co)``."""
    n, kh, kw, ci, co = k.shape
    d = jnp.einsum("nhwio,nm->hwnimo", k, jnp.eye(n, dtype=k.dtype))
    return d.reshape(kh, kw, n * ci, n * co)


def conv2d(x, kernel, bias, stride: int = 1, padding: int = 0, groups: int = 1):
    """NHWC conv with symmetric explicit padding (PyTorch semantics), HWIO kernel."""
    y = jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    return y + bias


def torch_uniform(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """PyTorch's default conv init (kernel and bias): float32 ``shape`` drawn from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) by ``rng``; ``fan_in = k * k * cin``.

    Drawn with NumPy: jax.random would compile one XLA kernel per distinct shape (seconds each on
    CPU), which made building a network take minutes.
    """
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def _torch_uniform(key, shape, fan_in):
    """:func:`torch_uniform` seeded by a JAX ``key`` (deterministic in it). Under tracing
    (``nnx.eval_shape``) it falls back to jax.random, which then costs nothing."""
    if isinstance(key, jax.core.Tracer):
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel().tolist()
    return jnp.asarray(torch_uniform(np.random.default_rng(seed), shape, fan_in))


# ----------------------------------------------------------------------------- modules
class Conv(nnx.Module):
    """k x k conv with bias, NHWC, PyTorch padding and PyTorch's default initialisation.

    kernel ``(k, k, cin, cout)``; inside a branch stack ``(N, k, k, cin, cout)`` (see module doc).
    """

    def __init__(self, cin: int, cout: int, k: int = 3, *, stride: int = 1, padding: int | None = None,
                 rngs: nnx.Rngs):
        fan_in = cin * k * k
        self.kernel = nnx.Param(_torch_uniform(rngs.params(), (k, k, cin, cout), fan_in))
        self.bias = nnx.Param(_torch_uniform(rngs.params(), (cout,), fan_in))
        self.stride = stride
        self.padding = (k - 1) // 2 if padding is None else padding
        self.impl: str | None = None  # wide apply path; None: the backend's default (set_impl sets it)

    @property
    def branches(self) -> int:
        """Number of stacked branches (1 for a plain conv)."""
        k = self.kernel[...]
        return k.shape[0] if k.ndim == 5 else 1

    def _count(self, y, k, groups_total_in: int):
        kh, kw = k.shape[-4], k.shape[-3]
        _add_macs("conv", kh * kw * groups_total_in * math.prod(y.shape))

    def __call__(self, x):
        k, b = self.kernel[...], self.bias[...]
        if k.ndim == 4 or k.shape[0] == 1:  # plain, or a one-branch stack: every path is this conv
            y = conv2d(x, k.reshape(k.shape[-4:]), b.reshape(-1), self.stride, self.padding)
            self._count(y, k, k.shape[-2])
            return y
        n = k.shape[0]
        impl = self.impl or default_impl()
        if impl == "grouped":
            y = conv2d(x, fold_grouped(k), b.reshape(-1), self.stride, self.padding, groups=n)
        elif impl == "loop":
            xs = jnp.split(x, n, axis=-1)
            y = jnp.concatenate([conv2d(xi, k[i], b[i], self.stride, self.padding)
                                 for i, xi in enumerate(xs)], axis=-1)
        elif impl == "dense":
            y = conv2d(x, block_diagonal(k), b.reshape(-1), self.stride, self.padding)
        else:
            check_impl(impl, WIDE_IMPLS)
            raise ValueError(f"apply path {impl!r} is not a conv path; choose from {', '.join(WIDE_IMPLS)}")
        self._count(y, k, k.shape[3])  # per-group input channels: Cin/groups
        return y

    def fanout(self, x):
        """All branches read the same ``x``: one dense conv ``cin -> N*cout`` (branch-major output)."""
        k, b = self.kernel[...], self.bias[...]
        if k.ndim == 4:
            return self(x)
        y = conv2d(x, fold_grouped(k), b.reshape(-1), self.stride, self.padding)
        self._count(y, k, k.shape[3])
        return y


def _make_convs(module: nnx.Module, widths: Mapping[str, tuple[int, int]], names, rngs):
    """One :class:`Conv` per name, its geometry from the spec."""
    for name in names:
        k, stride, pad = geometry(name)
        cin, cout = widths[name]
        setattr(module, name.split(".")[-1], Conv(cin, cout, k, stride=stride, padding=pad, rngs=rngs))


class ESA(nnx.Module):
    """Enhanced spatial attention on ``(B, H, W, n)``; H, W >= 15 (conv2 is a valid 3x3, stride 2).

    widths: ``{'conv1': (n, f), 'conv_f': (f, f), ..., 'conv4': (f, n)}``.
    """

    def __init__(self, widths: Mapping[str, tuple[int, int]], *, rngs: nnx.Rngs):
        _make_convs(self, widths, ESA_CONVS, rngs)

    def __call__(self, x):
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        v = jax.lax.reduce_window(c1, -jnp.inf, jax.lax.max, (1, 7, 7, 1), (1, 3, 3, 1), "VALID")
        v = relu(self.conv_max(v))
        c3 = relu(self.conv3(v))
        c3 = self.conv3_(c3)
        c3 = jax.image.resize(c3, (*x.shape[:3], c3.shape[-1]), "bilinear", antialias=False)
        cf = self.conv_f(c1_)
        return x * jax.nn.sigmoid(self.conv4(c3 + cf))


class RFDB(nnx.Module):
    """Residual feature distillation block, ``(B, H, W, n_in) -> (B, H, W, n_out)``.

    ``steps`` distillation steps (3 for RFDB, 1 for SRFDB) are read from the widths. An optional
    ``cat_p`` 1x1 conv (the merged/pruned layout) is applied to the concat before ``c5``.
    No block-level residual (the released RFDN has none).
    """

    def __init__(self, widths: Mapping[str, tuple[int, int]], *, rngs: nnx.Rngs):
        self.steps = block_steps(widths)
        names = [f"c{i}_{t}" for i in range(1, self.steps + 1) for t in ("d", "r")] + ["c4", "c5"]
        if "cat_p" in widths:
            names.append("cat_p")
        _make_convs(self, widths, names, rngs)
        if "cat_p" not in widths:
            self.cat_p = None
        self.esa = ESA({k[4:]: v for k, v in widths.items() if k.startswith("esa.")}, rngs=rngs)

    def __call__(self, x):
        distilled, r = [], x
        for i in range(1, self.steps + 1):
            distilled.append(act(getattr(self, f"c{i}_d")(r)))
            r = act(getattr(self, f"c{i}_r")(r) + r)
        distilled.append(act(self.c4(r)))
        y = cat(distilled, groups=self.c5.branches)
        if self.cat_p is not None:
            y = self.cat_p(y)
        return self.esa(self.c5(y))


class SRFDB(RFDB):
    """The PRFDN team's small RFDB (class RFDBS): one distillation step (``spec.rfdb_widths(n, 1)``)."""


def stacked(n: int, factory, rngs: nnx.Rngs):
    """``n`` independently initialised copies of ``factory(rngs)`` as one module.

    Every parameter gets a leading branch axis ``(n, ...)``: the same pytree ``nnx.vmap`` creation
    gives, built eagerly copy by copy (cheap) and stacked.
    """
    graphdef, first = nnx.split(factory(rngs))
    states = [first] + [nnx.split(factory(rngs))[1] for _ in range(n - 1)]
    return nnx.merge(graphdef, jax.tree.map(lambda *a: jnp.stack(a), *states))


def apply_stacked(module: nnx.Module, xs):
    """Apply a stacked module with ``jax.vmap`` over its branch axis.

    params ``(N, ...)``, activations ``(N, B, H, W, C)``. Split/merge (rather than ``nnx.vmap`` on the
    module) keeps this usable inside plain ``jax.jit`` closures over the model.
    """
    graphdef, state = nnx.split(module)
    return jax.vmap(lambda s, x: nnx.merge(graphdef, s)(x))(state, xs)


def branch_slice(module: nnx.Module, i: int) -> nnx.Module:
    """Branch ``i`` of a stacked module, as a plain module (a view with copied arrays)."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
