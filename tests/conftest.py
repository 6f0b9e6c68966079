"""Shared fixtures: the ../shared data folder (or $PRFDN_SHARED), random inputs, torch threads."""

import pytest

from helpers import shared_path
from prfdn_jax.backends import configure_xla_flags

# the same XLA flags `prfdn` sets for its own runs, so in-process and subprocess runs compute alike
configure_xla_flags()


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


