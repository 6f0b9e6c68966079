"""Shared fixtures: the ../shared data folder (or $PRFDN_SHARED), random inputs, torch threads."""

import os
from pathlib import Path

import numpy as np
import pytest

from prfdn_jax.backends import configure_xla_flags

# the same XLA flags `prfdn` sets for its own runs, so in-process and subprocess runs compute alike
configure_xla_flags()

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRFDN_SHARED", ROOT.parent / "shared"))


def shared_path(*parts) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set PRFDN_SHARED)")
    return p


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


def random_image(h=24, w=20, seed=0, batch=1) -> np.ndarray:
    """(B, H, W, 3) float32 in [0, 255]."""
    return np.random.default_rng(seed).uniform(0, 255, (batch, h, w, 3)).astype(np.float32)


def take(it, n: int, close: bool = False) -> list:
    """The next ``n`` batches of a data iterator; ``close``: close it afterwards (worker processes)."""
    try:
        return [next(it) for _ in range(n)]
    finally:
        if close:
            it.close()


def assert_same_batches(a, b) -> None:
    """Batches ``a`` and ``b`` hold the same HR and LR arrays, pair by pair."""
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["hr"], y["hr"])
        np.testing.assert_array_equal(x["lr"], y["lr"])
