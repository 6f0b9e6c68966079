"""Running a :class:`~prfdn_jax.deploy.graph.Program` in JAX: one jitted function, weights as constants.

The weights are closed over (constants of the compiled program), so no call transposes or copies
them. ``dtype`` is the compute dtype of the convs and elementwise ops; ops marked ``precise`` (the
global residual and the last conv) run in float32 and the output is float32.

Padded inputs (shape buckets): with ``valid`` (:func:`prfdn_jax.deploy.shapes.valid_args`), an image padded
to a larger shape computes exactly what the image alone computes in its valid region: every conv with
zero padding sees zeros outside its input's valid extent (a mask), and ESA's bilinear upsample
interpolates from the valid pooled extent to the valid extent (index tables made on the host, as for an
unpadded image). Strided convs and the max-pool read no padding in their valid outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from prfdn_jax.deploy.graph import Act, Add, Concat, Conv, MaxPool, Mul, PixelShuffle, Program, Resize, Slice
from prfdn_jax.spec import LRELU_SLOPE

DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}


def leaky_relu(x):
    """LeakyReLU(0.05) as ``where(x > 0, x, 0.05 x)`` (the form GPU compilers fuse into a conv)."""
    return jnp.where(x > 0, x, x * jnp.asarray(LRELU_SLOPE, x.dtype))


def pixel_shuffle(x, r: int):
    """PyTorch PixelShuffle in NHWC: ``(B, H, W, C*r*r) -> (B, H*r, W*r, C)``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def resize_table(n: int, out: int, length: int | None = None):
    """``(i0, i1, lam)``: the two source taps and the weight of each of ``out`` outputs when ``n`` values are
    resized to ``out`` (PyTorch ``align_corners=False``), padded to ``length`` entries (reading index 0)."""
    src = np.maximum((np.arange(out, dtype=np.float64) + 0.5) * (n / out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int32), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = (src - i0).astype(np.float32)
    extra = (length or out) - out
    return tuple(np.pad(a, (0, extra)) for a in (i0, i1, lam))


def bilinear_resize(x, h: int, w: int, tables=None):
    """Bilinear resize of NHWC ``x`` to ``h x w``, PyTorch ``align_corners=False`` without antialiasing.

    Two taps per axis, gathered and interpolated: O(output) work that fuses with the ops after it
    (``jax.image.resize`` builds dense interpolation matrices instead). ``tables``: the rows' and the
    columns' :func:`resize_table` (arrays, e.g. of a padded image's valid extents), else made for ``x``.
    """
    def axis(v, out: int, ax: int, table):
        if table is None:
            if v.shape[ax] == out:
                return v
            table = resize_table(v.shape[ax], out)
        i0, i1, lam = table
        shape = [1] * v.ndim
        shape[ax] = out
        a, b = jnp.take(v, i0, axis=ax), jnp.take(v, i1, axis=ax)
        return a + (b - a) * jnp.asarray(lam, v.dtype).reshape(shape)

    rows, cols = tables if tables is not None else (None, None)
    return axis(axis(x, h, 1, rows), w, 2, cols)


def _mask(x, extent):
    """``x`` with zeros outside its first ``extent = (h, w)`` rows and columns (a traced int32 pair)."""
    shape = (1, x.shape[1], x.shape[2], 1)
    keep = ((jax.lax.broadcasted_iota(jnp.int32, shape, 1) < extent[0])
            & (jax.lax.broadcasted_iota(jnp.int32, shape, 2) < extent[1]))
    return jnp.where(keep, x, jnp.zeros((), x.dtype))


def _conv(x, op: Conv, dtype, grouped: str):
    dt = jnp.float32 if op.precise else dtype
    x = x.astype(dt)
    k = jnp.asarray(op.kernel, dt)
    pad = ((op.pad, op.pad), (op.pad, op.pad))
    dn = ("NHWC", "HWIO", "NHWC")
    if op.groups > 1 and grouped == "loop":
        g = op.groups
        xs = jnp.split(x, g, axis=-1)
        ks = jnp.split(k, g, axis=-1)
        y = jnp.concatenate([jax.lax.conv_general_dilated(xi, ki, (op.stride,) * 2, pad, dimension_numbers=dn)
                             for xi, ki in zip(xs, ks)], axis=-1)
    else:
        y = jax.lax.conv_general_dilated(x, k, (op.stride,) * 2, pad, dimension_numbers=dn,
                                         feature_group_count=op.groups)
    return y + jnp.asarray(op.bias, dt)


def evaluate(prog: Program, x, dtype=jnp.float32, grouped: str = "grouped", valid=None):
    """The program's output for ``x`` ``(B, H, W, 3)`` in [0, 255] (traceable; float32 result).

    ``valid``: ``{"extent": {value: (h, w)}, "resize": {op: tables}}`` of a padded ``x``
    (:func:`prfdn_jax.deploy.shapes.valid_args`): the output's valid region is then exactly the output of
    ``x``'s valid region alone (module doc)."""
    env = {prog.inp: x.astype(dtype)}
    for op in prog.ops:
        if isinstance(op, Conv):
            s = env[op.src]
            if valid is not None and op.pad:
                s = _mask(s, valid["extent"][op.src])
            v = _conv(s, op, dtype, grouped)
        elif isinstance(op, Act):
            s = env[op.src]
            v = leaky_relu(s) if op.kind == "lrelu" else jax.nn.relu(s) if op.kind == "relu" else jax.nn.sigmoid(s)
        elif isinstance(op, Add):
            a, b = env[op.a], env[op.b]
            if op.precise:
                a, b = a.astype(jnp.float32), b.astype(jnp.float32)
            v = a + b.astype(a.dtype)
        elif isinstance(op, Mul):
            v = env[op.a] * env[op.b]
        elif isinstance(op, Concat):
            parts = [env[s] for s in op.srcs]
            dt = jnp.result_type(*parts)
            v = jnp.concatenate([p.astype(dt) for p in parts], axis=-1)
        elif isinstance(op, Slice):
            v = env[op.src][..., op.start:op.stop]
        elif isinstance(op, MaxPool):
            s = env[op.src]
            v = jax.lax.reduce_window(s, jnp.asarray(-jnp.inf, s.dtype), jax.lax.max, (1, op.window, op.window, 1),
                                      (1, op.stride, op.stride, 1), "VALID")
        elif isinstance(op, Resize):
            s, like = env[op.src], env[op.like]
            v = bilinear_resize(s, like.shape[1], like.shape[2], None if valid is None else valid["resize"][op.out])
        elif isinstance(op, PixelShuffle):
            v = pixel_shuffle(env[op.src], op.r)
        else:  # pragma: no cover - every op kind is handled above
            raise TypeError(f"unknown op {op!r}")
        env[op.out] = v
    return env[prog.out].astype(jnp.float32)


def compile_program(prog: Program, dtype: str = "float32", grouped: str = "grouped"):
    """``f(x)``: jitted program, ``(B, H, W, 3)`` float in [0, 255] -> float32 SR (compiled per shape)."""
    dt = DTYPES[dtype]
    frozen = prog.copy()

    @jax.jit
    def f(x):
        return evaluate(frozen, x, dt, grouped)

    return f
