"""Apply paths of branch and wide networks, and the default chosen per backend from measurements.

All paths compute the same function (tests check it to 1e-5); they differ in speed, which depends on
the backend. Wide paths (how one conv over N branch-major groups is computed):

* ``grouped``: one conv with ``feature_group_count=N`` (what ``jax.vmap`` over branches lowers to);
* ``loop``: one conv per branch, outputs concatenated;
* ``dense``: one conv with the block-diagonal ``N*cin -> N*cout`` kernel (N times the MACs, but one
  large, well-shaped conv).

Branch networks also have ``vmap`` (``jax.vmap`` over the stacked branches) and ``sequential`` (one
branch after another, for tests).

The default comes from :data:`DEFAULT_IMPL` keyed by ``jax.default_backend()`` and can be overridden
with the environment variable ``PRFDN_IMPL`` or per network with :func:`prfdn_jax.networks.set_impl`.
"""

from __future__ import annotations

import os

import jax

WIDE_IMPLS = ("grouped", "loop", "dense")
BRANCH_IMPLS = ("vmap", "sequential")
ENV_VAR = "PRFDN_IMPL"

# Fastest exact path per backend (`prfdn bench paths`; tables in BENCHMARKS.md):
# - cpu (XLA CPU, 2 cores, B4S nf=50, 1x128x128): loop 3.5x faster forward and 6.4x faster
#   forward+backward than grouped; dense in between.
# - gpu (NVIDIA H100, JAX 0.11, B4S nf=50 x2): one training step of 64 x 64x64 LR patches, fp32 Adam:
#   dense 36.7 ms, loop 43.9, vmap 59.5, grouped 61.1; forward at 540x960 fp16: dense 12.2 ms,
#   loop 18.2, grouped 39.2.
DEFAULT_IMPL = {"cpu": "loop", "gpu": "dense", "cuda": "dense", "rocm": "dense", "tpu": "dense"}


def check_impl(impl: str | None, allowed=WIDE_IMPLS + BRANCH_IMPLS) -> str | None:
    """``impl`` if it is None or one of ``allowed``; ValueError (one line) otherwise."""
    if impl is not None and impl not in allowed:
        raise ValueError(f"unknown apply path {impl!r}; choose from {', '.join(allowed)}")
    return impl


def default_impl(backend: str | None = None) -> str:
    """The apply path for ``backend`` (default: JAX's default backend); ``$PRFDN_IMPL`` wins."""
    env = os.environ.get(ENV_VAR)
    if env:
        return check_impl(env, WIDE_IMPLS + BRANCH_IMPLS)
    return DEFAULT_IMPL.get(backend or jax.default_backend(), "loop")


# XLA flags the package sets for its own runs (the `prfdn` command) unless the user set XLA_FLAGS.
# On XLA CPU, YNNPACK's convolution path made the deployed prfdn-x2 at 540x960 2x slower (1000 ms vs
# 543 ms; BENCHMARKS.md): an empty fusion-type list keeps convolutions on XLA's own path.
XLA_FLAG_DEFAULTS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def configure_xla_flags() -> bool:
    """Set :data:`XLA_FLAG_DEFAULTS` in ``XLA_FLAGS`` unless the user set it; True if set.

    Must run before JAX initialises a backend (flags are read then).
    """
    if "XLA_FLAGS" in os.environ:
        return False
    os.environ["XLA_FLAGS"] = " ".join(XLA_FLAG_DEFAULTS)
    return True
