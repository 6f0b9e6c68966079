"""Shared fixtures: the ../shared data folder (or $PRFDN_SHARED), random inputs, torch threads; each test
process (and the prfdn processes it starts) keeps compiled programs in a temporary folder of its own,
never in the user's cache."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ["PRFDN_CACHE_DIR"] = _CACHE_DIR = tempfile.mkdtemp(prefix="prfdn-test-cache-")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)

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


