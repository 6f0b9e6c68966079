"""widen_esa: the wider network computes exactly what the pruned one did, on every form; it refuses to narrow."""

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_branch_arch, random_image, random_merged_arch
from prfdn_jax.checkpoint import flat_params, model_from_flat
from prfdn_jax.macs import macs, params
from prfdn_jax.networks import build
from prfdn_jax.reparam import reparam
from prfdn_jax.widen import WidenError, esa_prefixes, widen_esa


def _nets():
    yield reparam(build(random_branch_arch(0, "b2", 4)))       # wide (the shipped prfdn-x4's form)
    yield build(random_branch_arch(1, "b4s", 2))                 # branch, with an SRFDB
    yield build(random_merged_arch(2, "b4s", 3))             # merged (free-pruned)


@pytest.mark.parametrize("net", list(_nets()), ids=["wide", "branch", "merged"])
def test_widen_esa_is_exact(net):
    f = 1 + max(max(w) for k, w in net.arch.widths if ".esa." in k and not k.endswith("conv4"))
    arch, flat = widen_esa(net.arch, flat_params(net), f, seed=3)
    wide = model_from_flat(arch, flat)
    for p in esa_prefixes(arch):
        assert arch.w[p + "conv2"] == (f, f) and arch.w[p + "conv4"][0] == f
        assert arch.w[p + "conv4"][1] == net.arch.w[p + "conv4"][1]  # ESA's output width is the block's
    x = jnp.asarray(random_image(20, 23))
    ref = np.asarray(net(x))
    np.testing.assert_allclose(np.asarray(wide(x)), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert params(wide) > params(net) and macs(wide, 40, 40)["total"] > macs(net, 40, 40)["total"]


def test_widen_esa_refuses_to_narrow():
    net = reparam(build(random_branch_arch(0, "b2", 4)))
    with pytest.raises(WidenError, match="would narrow"):
        widen_esa(net.arch, flat_params(net), 1)
