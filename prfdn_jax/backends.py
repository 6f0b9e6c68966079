"""Every per-backend choice of the package in one table, and the one normaliser of backend names.

:func:`backend_name` maps any JAX backend or platform name to ``'cpu'``, ``'gpu'`` or ``'tpu'``
(``cuda``, ``rocm``, ``METAL`` and other accelerators are ``'gpu'``); :data:`CHOICES` holds one
:class:`BackendChoices` per normalised name, each choice with the measurement it rests on; every
module that chooses by backend reads :func:`choices` (nothing else looks at the backend's name):

* ``impl``: the default apply path of branch and wide networks (:mod:`prfdn_jax.networks`);
* ``rewrites``: the exact deploy rewrites (:func:`prfdn_jax.deploy.deploy`; implementations in
  :mod:`prfdn_jax.deploy.passes`);
* ``compute_dtype``: what training's ``compute_dtype='auto'`` means (:mod:`prfdn_jax.train_step`);
* ``video_batch``: frames per call of ``prfdn upscale`` on a video (:mod:`prfdn_jax.video`);
* ``bench_*``: warm-up and timed runs of ``prfdn bench`` (:mod:`prfdn_jax.bench`);
* ``device_memory``: whether the network's buffers live in accelerator memory, which the automatic
  tiles then budget apart from host memory (:mod:`prfdn_jax.inference`);
* ``xla_flags``: XLA flags the ``prfdn`` command sets (:func:`configure_xla_flags`);
* ``compile_cost``: what a new input shape costs against computing pixels, for planning shape buckets
  (:meth:`prfdn_jax.deploy.Deployed.compile_px`).

Apply paths (all compute the same function, tests check it to 1e-5; they differ in speed). Wide paths,
how one conv over N branch-major groups is computed:

* ``grouped``: one conv with ``feature_group_count=N`` (what ``jax.vmap`` over branches lowers to);
* ``loop``: one conv per branch, outputs concatenated;
* ``dense``: one conv with the block-diagonal ``N*cin -> N*cout`` kernel (N times the MACs, but one
  large, well-shaped conv).

Branch networks also have ``vmap`` (``jax.vmap`` over the stacked branches) and ``sequential`` (one
branch after another, for tests). ``$PRFDN_IMPL`` overrides the table's path; it is read when a
network is built or loaded (:func:`default_impl`), and the path is stored on the network.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = ["BRANCH_IMPLS", "CHOICES", "ENV_VAR", "WIDE_IMPLS", "XLA_FLAG_DEFAULTS", "BackendChoices", "Rewrites",
           "backend_name", "check_impl", "choices", "configure_xla_flags", "default_impl"]

WIDE_IMPLS = ("grouped", "loop", "dense")
BRANCH_IMPLS = ("vmap", "sequential")
ENV_VAR = "PRFDN_IMPL"

_ALIASES = {"cpu": "cpu", "tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "metal": "gpu"}


def backend_name(b: str | None = None) -> str:
    """``'cpu'``, ``'gpu'`` or ``'tpu'`` for a JAX backend or platform name (default: JAX's default
    backend); cuda, rocm, METAL and any other accelerator are ``'gpu'``."""
    if b is None:
        import jax  # here, not at the top: `prfdn --help` needs no JAX

        b = jax.default_backend()
    return _ALIASES.get(b.lower(), "gpu")


@dataclasses.dataclass(frozen=True)
class Rewrites:
    """The exact deploy rewrites a backend gets (:func:`prfdn_jax.deploy.passes.standard`'s options).

    ``merge``: convs of one kernel size reading one tensor become one conv; ``mix_kernels``: a 1x1 may
    join a 3x3 as its centre tap (more MACs, fewer kernels); ``fold_cost``: ``"macs"`` folds a 1x1
    into the conv before it only where that adds no MACs, ``"always"`` wherever allowed; ``grouped``:
    how grouped convs run (``"loop"``: one conv per group); ``pad``: conv outputs zero-padded to a
    multiple of this, ``pad_growth``: only where that grows a conv's outputs by at most this factor.
    """

    merge: bool
    mix_kernels: bool
    fold_cost: str
    grouped: str
    pad: int
    pad_growth: float | None

    def standard_options(self) -> dict:
        """Keyword arguments of ``passes.standard`` (everything but ``grouped``, a compile option)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "grouped"}


@dataclasses.dataclass(frozen=True)
class BackendChoices:
    """What the package does differently on one backend (see the module doc for who reads what)."""

    impl: str                  # default apply path of branch / wide networks
    rewrites: Rewrites         # deploy rewrites
    compute_dtype: str         # training's compute_dtype='auto'
    video_batch: int           # frames per call when upscaling a video
    bench_warmup: int          # `prfdn bench`: warm-up passes, timed runs
    bench_runs: int
    train_warmup: int          # `prfdn bench train`: warm-up steps, timed steps
    train_runs: int
    device_memory: bool        # the network's buffers live in accelerator memory
    # (seconds per compiled conv kernel, seconds per pixel, seconds per multiply-accumulate): a new shape's
    # compile against the pixels it could compute (Deployed.compile_px; the planner of shape buckets)
    compile_cost: tuple[float, float, float]
    xla_flags: tuple[str, ...] = ()


CHOICES: dict[str, BackendChoices] = {
    "cpu": BackendChoices(
        # Fastest exact path (`prfdn bench paths`; BENCHMARKS.md), XLA CPU, 2 cores, B4S nf=50, 1x128x128:
        # loop 3.5x faster forward and 6.4x faster forward+backward than grouped; dense in between.
        impl="loop",
        # Rewrites (`prfdn bench`, BENCHMARKS.md): mix_kernels 16% slower on the 2-core CPU; fold_cost
        # "macs" 6% faster than "always"; pointwise convs as matmuls and grouped convs as one conv are
        # slower on XLA CPU; pad 22/23 -> 24 only (pad_growth 1.1): prfdn-x2 at 540x960 3-4% faster,
        # every conv padded 4-5% faster but rfdn-x4's 50 -> 56 7% slower; prfdn-x3 unchanged.
        rewrites=Rewrites(merge=True, mix_kernels=False, fold_cost="macs", grouped="loop", pad=8, pad_growth=1.1),
        compute_dtype="float32",  # XLA CPU has no fast bf16 convs
        # 320x240 x2 on the 2-core CPU, frames/s of the SR alone: batch 1: 8.4, 2: 7.3, 4: 6.7
        video_batch=1,
        bench_warmup=2, bench_runs=5, train_warmup=2, train_runs=5,  # slow: a few runs
        device_memory=False,
        # 2-core CPU, fp32 (BENCHMARKS.md "Throughput"): compile 0.47-1.33 s, i.e. 9-16 ms per conv kernel
        # (grouped convs run as one per group); 1.3-14 us per pixel, about 0.4 us + 35 ps per MAC.
        compile_cost=(0.012, 4e-7, 3.5e-11),
        # YNNPACK's convolution path made the deployed prfdn-x2 at 540x960 2x slower (1000 ms vs 543 ms;
        # BENCHMARKS.md): an empty fusion-type list keeps convolutions on XLA's own path.
        xla_flags=("--xla_cpu_experimental_ynn_fusion_type=",),
    ),
    "gpu": BackendChoices(
        # NVIDIA H100, JAX 0.11, B4S nf=50 x2: one training step of 64 x 64x64 LR patches, fp32 Adam:
        # dense 36.7 ms, loop 43.9, vmap 59.5, grouped 61.1; forward at 540x960 fp16: dense 12.2 ms,
        # loop 18.2, grouped 39.2.
        impl="dense",
        # H200, prfdn-x2 1080p fp16, deployed (BENCHMARKS.md "GPU inference"): this set 4.69 ms; 1x1 as
        # centre taps of 3x3 (mix_kernels) 5.58; fold "macs" 5.92; no channel padding 8.29.
        rewrites=Rewrites(merge=True, mix_kernels=False, fold_cost="always", grouped="grouped", pad=8,
                          pad_growth=None),
        compute_dtype="bfloat16",
        video_batch=4,
        bench_warmup=50, bench_runs=244, train_warmup=10, train_runs=50,  # GPU: the NTIRE protocol (many timed runs)
        device_memory=True,
        # not measured: XLA GPU compiles more slowly and computes a pixel ~1000x faster, so a compile is
        # worth far more pixels (bucket plans merge much more)
        compile_cost=(0.03, 1e-10, 2e-13),
    ),
}
# TPU: not measured; the GPU's choices (large dense convs, bf16, few kernels).
CHOICES["tpu"] = CHOICES["gpu"]

# Every backend's flags: XLA reads them when a backend starts, before the backend is known, and a
# flag of one backend (``xla_cpu_*``, ``xla_gpu_*``) is ignored by the others.
XLA_FLAG_DEFAULTS = tuple(dict.fromkeys(f for c in CHOICES.values() for f in c.xla_flags))


def choices(backend: str | None = None) -> BackendChoices:
    """The choices of ``backend`` (any name :func:`backend_name` takes; default: JAX's backend)."""
    return CHOICES[backend_name(backend)]


def check_impl(impl: str | None, allowed=WIDE_IMPLS + BRANCH_IMPLS) -> str | None:
    """``impl`` if it is None or one of ``allowed``; ValueError (one line) otherwise."""
    if impl is not None and impl not in allowed:
        raise ValueError(f"unknown apply path {impl!r}; choose from {', '.join(allowed)}")
    return impl


def default_impl(backend: str | None = None) -> str:
    """The apply path for ``backend`` (default: JAX's): ``$PRFDN_IMPL`` if set, else the table's.

    Read when a network is built or loaded (never while tracing: jitted programs are cached per network).
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return check_impl(env, WIDE_IMPLS + BRANCH_IMPLS)
    return choices(backend).impl


def configure_xla_flags() -> bool:
    """Set :data:`XLA_FLAG_DEFAULTS` in ``XLA_FLAGS`` unless the user set it; True if set.

    Must run before JAX initialises a backend (flags are read then).
    """
    if "XLA_FLAGS" in os.environ:
        return False
    os.environ["XLA_FLAGS"] = " ".join(XLA_FLAG_DEFAULTS)
    return True
