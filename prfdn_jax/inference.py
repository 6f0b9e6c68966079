"""Running a network on images: jitted apply, uint8 in and out, optional overlapping tiles.

The networks see float pixels in [0, 255] and the output is clamped and rounded to uint8, as the
released models and the benchmark do. One compile per input shape; ESA pools over the whole image, so a
plainly padded image would change every output pixel: shape buckets (:mod:`prfdn_jax.throughput`) run
the deployed program with its padding masked, which gives the image's own output.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax.backends import choices
from prfdn_jax.networks import with_impl
from prfdn_jax.spec import MIN_SIZE


def make_apply(model: nnx.Module, impl: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``f(x)``: ``(B, H, W, 3)`` float [0, 255] -> ``(B, sH, sW, 3)`` float, jitted per shape.

    ``impl``: the apply path (default: the one set on ``model``, else the backend's).
    """
    graphdef, state = nnx.split(with_impl(model, impl) if impl else model)

    @jax.jit
    def f(state, x):
        return nnx.merge(graphdef, state)(x)

    return lambda x: f(state, jnp.asarray(x, jnp.float32))


class NonFiniteOutput(ValueError):
    """The network output holds NaN or Inf (broken weights, or weights that overflow float32): one line."""


def check_finite(y, what: str = "the network output") -> None:
    """Raise :class:`NonFiniteOutput` if ``y`` holds NaN or Inf. The one check every path that writes a
    network's output goes through (:func:`to_uint8`: images, tiles, eval, video; :func:`check_network`:
    export), so garbage is refused instead of being written as a black or white image."""
    y = np.asarray(y)
    if not np.isfinite(y).all():
        counts = ((int(np.isnan(y).sum()), "NaN"), (int(np.isinf(y).sum()), "infinite"))
        values = " and ".join(f"{n} {kind} value{'s' if n > 1 else ''}" for n, kind in counts if n)
        raise NonFiniteOutput(f"{what} is not finite ({values}): the weights are broken or overflow float32")


def check_network(apply: Callable, size: int = 2 * MIN_SIZE) -> None:
    """Run ``apply`` on a fixed ``size x size`` image-like input; :class:`NonFiniteOutput` if its output is
    not finite (weights that overflow float32 are finite themselves: only the output shows it)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    x = np.stack([xx, yy, 1 - (xx + yy) / 2], -1)[None] * 200 + 20
    check_finite(apply(x.astype(np.float32)), "the network output on a test image")


def to_uint8(y, rows: int = 256) -> np.ndarray:
    """Round and clamp float pixels to uint8 (round half to even, like ``jnp.round``), ``rows`` rows at a
    time along axis -3, so a large output needs no full-size float temporaries. A NaN or Inf raises
    :class:`NonFiniteOutput` (:func:`check_finite`) instead of becoming black or white."""
    y = np.asarray(y)
    out = np.empty(y.shape, np.uint8)
    if y.ndim < 3:
        check_finite(y)
        return np.clip(np.rint(y), 0, 255, out=out, casting="unsafe")
    for r in range(0, y.shape[-3], rows):
        sl = (Ellipsis, slice(r, r + rows), slice(None), slice(None))
        check_finite(y[sl])
        out[sl] = np.clip(np.rint(y[sl]), 0, 255)
    return out


DEFAULT_OVERLAP = 16  # LR pixels shared by neighbouring tiles (chosen from the Urban100 measurement, BENCHMARKS.md)
TILE_BATCH = 4        # tiles run together through one compiled program


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` shared."""
    if length <= tile:
        return [0]
    step = tile - overlap
    n = -(-(length - overlap) // step)  # ceil((length - overlap) / step)
    starts = [min(i * step, length - tile) for i in range(n)]
    return sorted(set(starts))


def _ramp(length: int, starts: list[int], tile: int, i: int, scale: int) -> np.ndarray:
    """Feathering weights along one axis of tile ``i`` (output pixels): linear ramps where it overlaps
    its neighbours, 1 elsewhere; weights of overlapping tiles are blended by normalisation."""
    n = tile * scale
    w = np.ones(n, np.float32)
    pos = np.arange(n, dtype=np.float32) + 0.5
    if i > 0:
        ov = (starts[i - 1] + tile - starts[i]) * scale
        w = np.minimum(w, np.clip(pos / max(ov, 1), 1e-3, 1.0))
    if i < len(starts) - 1:
        ov = (starts[i] + tile - starts[i + 1]) * scale
        w = np.minimum(w, np.clip((n - pos) / max(ov, 1), 1e-3, 1.0))
    return w


def upscale_array(apply: Callable, img: np.ndarray, scale: int, tile: int = 0, overlap: int = DEFAULT_OVERLAP,
                  batch: int = TILE_BATCH, progress: Callable[[int, int], object] | None = None) -> np.ndarray:
    """Upscale one ``(H, W, 3)`` uint8 image -> ``(sH, sW, 3)`` uint8.

    ``tile > 0`` runs ``tile x tile`` tiles overlapping by ``overlap`` LR pixels, ``batch`` at a time
    through one compiled program (every tile has the same shape), and blends the overlaps with linear
    feathering, so no seam shows. Results differ slightly from whole-image inference because ESA's
    attention sees only its tile (Urban100: BENCHMARKS.md). The blend is accumulated one row of tiles
    at a time (a float strip ``tile * scale`` rows high), written into the uint8 output as each row is
    done, so memory beyond the output is independent of the image height. ``progress(done, total)`` is
    called after each batch of tiles.
    """
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIZE:
        raise ValueError(f"image is {w}x{h}; the network needs at least {MIN_SIZE}x{MIN_SIZE} pixels")
    if not tile or (h <= tile and w <= tile):
        return to_uint8(apply(img.astype(np.float32)[None])[0])
    if tile < MIN_SIZE or overlap < 0 or overlap >= tile:
        raise ValueError(f"tile {tile} with overlap {overlap}: need tile >= {MIN_SIZE} and 0 <= overlap < tile")
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    boxes = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    out = np.empty((h * scale, w * scale, 3), np.uint8)
    sh = th * scale
    strip = _Strip(out, sh)
    wxs = [_ramp(w, xs, tw, j, scale) for j in range(len(xs))]
    for k in range(0, len(boxes), batch):
        group = boxes[k:k + batch]
        tiles = np.stack([img[ys[i]:ys[i] + th, xs[j]:xs[j] + tw] for i, j in group]).astype(np.float32)
        if len(group) < batch and len(boxes) > batch:  # keep one shape: one compiled program
            tiles = np.concatenate([tiles, np.repeat(tiles[-1:], batch - len(group), 0)])
        sr = np.asarray(apply(tiles))
        for (i, j), y in zip(group, sr):
            if strip.y0 != ys[i] * scale:
                strip.advance(ys[i] * scale)
            wt = (_ramp(h, ys, th, i, scale)[:, None] * wxs[j][None, :])[..., None]
            x0 = xs[j] * scale
            strip.acc[:, x0:x0 + tw * scale] += y * wt
            strip.wsum[:, x0:x0 + tw * scale] += wt
        if progress is not None:
            progress(min(k + batch, len(boxes)), len(boxes))
    strip.advance(h * scale)
    return out


class _Strip:
    """The float accumulator of one row of tiles (output rows ``y0 .. y0 + rows``) over a uint8 output."""

    def __init__(self, out: np.ndarray, rows: int):
        self.out, self.rows, self.y0 = out, rows, None
        self.acc = self.wsum = None

    def advance(self, y0: int) -> None:
        """Write the rows above ``y0`` (complete: no later tile reaches them) and start a strip at ``y0``,
        carrying over the rows the next row of tiles overlaps."""
        n_out, width = self.out.shape[0], self.out.shape[1]
        acc = np.zeros((min(self.rows, n_out - y0), width, 3), np.float32)
        wsum = np.zeros((len(acc), width, 1), np.float32)
        if self.y0 is not None:
            done = y0 - self.y0
            self.out[self.y0:y0] = to_uint8(self.acc[:done] / self.wsum[:done])
            keep = self.acc[done:]
            acc[:len(keep)], wsum[:len(keep)] = keep, self.wsum[done:]
        self.y0, self.acc, self.wsum = y0, acc, wsum


# ----------------------------------------------------------------------------- memory and automatic tiles
GB = 1e9
DEFAULT_BUDGET_GB = 2.0    # at most; less where 25 % of the available memory is less
FIXED_BYTES = 0.6 * GB     # JAX, the compiled program and the weights (measured: 0.34-0.38 GB peak RSS)
SAFETY = 1.5               # on the fitted network bytes per pixel
MIN_AUTO_TILE = 64         # below this the overlaps cost more than the tiles


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` of /proc/meminfo), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_budget_gb() -> float:
    """``--memory-budget``'s default: 25 % of the available memory, at most 2 GB (2 GB where unknown),
    at least 1 GB."""
    avail = available_memory()
    if avail is None:
        return DEFAULT_BUDGET_GB
    return round(max(1.0, min(DEFAULT_BUDGET_GB, 0.25 * avail / GB)), 1)


def network_bytes_per_pixel(arch) -> float:
    """Peak bytes per input (LR) pixel of one forward pass of ``arch``, safety factor included.

    Fitted to the peak RSS of whole-image inference on the CPU (512^2 to 2048^2 inputs, slope between
    sizes): prfdn-x2 542, prfdn-x3 785, rfdn-x4 2710, the b4s x4 branch net 4853 bytes per pixel, i.e.
    float32 activations of about 3x the widest layer of the merged (deployed) network plus twice its
    ``3 * scale^2`` output channels (0.96-1.0 of this fit).
    """
    from prfdn_jax.spec import merged_widths

    widths = arch.w if arch.form == "merged" else merged_widths(arch)
    widest = max(max(io) for io in widths.values())
    return SAFETY * 4 * (3 * widest + 6 * arch.scale ** 2)


def peak_bytes(arch, h: int, w: int, tile: int = 0, overlap: int = DEFAULT_OVERLAP, batch: int = TILE_BATCH,
               network_limit: float | None = None, alpha: bool = False) -> tuple[float, float]:
    """(peak host bytes, network bytes) of upscaling an ``h x w`` image (``tile`` 0: the whole image).

    Host: the fixed cost plus the larger of two phases: running the network (uint8 input and output,
    two float blend strips at a row change, and the network's own buffers unless they live on an
    accelerator: ``network_limit`` given) and writing the result (the output, Pillow's 4-byte-per-pixel
    copy, and with ``alpha`` the upscaled alpha and the RGBA stack).
    """
    s2 = arch.scale ** 2
    if not tile or (h <= tile and w <= tile):
        net_px, strips = h * w, 0
    else:
        th, tw = min(tile, h), min(tile, w)
        n = len(tile_starts(h, th, overlap)) * len(tile_starts(w, tw, overlap))
        net_px = min(batch, n) * th * tw
        strips = 2 * 16 * th * w * s2 + 16 * th * tw * s2
    net = network_bytes_per_pixel(arch) * net_px
    run = h * w * (4 + 3 * s2) + strips + (net if network_limit is None else 0)
    write = h * w * (4 + s2 * (13 if alpha else 8))
    return FIXED_BYTES + max(run, write), net


def device_memory() -> int | None:
    """Bytes of memory of the default device when it is an accelerator (None on the CPU or unknown)."""
    try:
        if not choices().device_memory:
            return None
        stats = jax.local_devices()[0].memory_stats() or {}
        return int(stats["bytes_limit"]) or None
    except Exception:  # noqa: BLE001 - no memory statistics: treat like host memory
        return None


def choose_tile(arch, h: int, w: int, budget_bytes: float, overlap: int = DEFAULT_OVERLAP,
                batch: int = TILE_BATCH, device_bytes: int | None = None, alpha: bool = False) -> int:
    """The largest tile (LR pixels, a multiple of 16) with which an ``h x w`` image fits ``budget_bytes``
    of host memory (and half of ``device_bytes`` of accelerator memory for the network); 0: the whole
    image fits. Raises ``MemoryError`` (one line) when not even a :data:`MIN_AUTO_TILE` tile fits."""
    net_limit = None if device_bytes is None else 0.5 * device_bytes

    def fits(t: int) -> bool:
        host, net = peak_bytes(arch, h, w, t, overlap, batch, net_limit, alpha)
        return host <= budget_bytes and (net_limit is None or net <= net_limit)

    if fits(0):
        return 0
    smallest = max(MIN_AUTO_TILE, 2 * overlap + 16)
    for t in range(min(max(h, w), 8192) // 16 * 16, smallest - 1, -16):
        if fits(t):
            return t
    host, _ = peak_bytes(arch, h, w, smallest, overlap, batch, net_limit, alpha)
    raise MemoryError(f"needs about {host / GB:.1f} GB even in {smallest}x{smallest} tiles")
