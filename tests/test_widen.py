"""widen: the wider network computes exactly what the pruned one did, on every form; it refuses to narrow."""

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_branch_arch, random_image, random_merged_arch
from prfdn_jax.checkpoint import flat_params, model_from_flat
from prfdn_jax.macs import macs, params
from prfdn_jax.networks import build
from prfdn_jax.reparam import reparam
from prfdn_jax.widen import WidenError, block_prefixes, widen

NETS = {
    "wide": lambda: reparam(build(random_branch_arch(0, "b2", 4))),  # the shipped prfdn-x4's form
    "branch": lambda: build(random_branch_arch(1, "b4s", 2)),         # with an SRFDB
    "merged": lambda: build(random_merged_arch(2, "b4s", 3)),         # free-pruned
}


def _widest(arch, part: str) -> int:
    names = [k for k, _ in arch.widths if part in k and not k.endswith(("conv4", "c5", "c_r"))]
    return 1 + max(max(arch.w[k]) for k in names)


@pytest.mark.parametrize("form,what", [("wide", "esa"), ("wide", "distilled"), ("branch", "both"),
                                       ("merged", "esa")])
def test_widen_is_exact(form, what):
    net = NETS[form]()
    kw = {"esa": _widest(net.arch, ".esa.")} if what in ("esa", "both") else {}
    if what in ("distilled", "both"):
        kw["distilled"] = 1 + max(net.arch.w[p + "c4"][1] for p in block_prefixes(net.arch))
    arch, flat = widen(net.arch, flat_params(net), seed=3, **kw)
    wide = model_from_flat(arch, flat)
    for p in block_prefixes(arch):
        if "esa" in kw:
            assert arch.w[p + "esa.conv2"] == (kw["esa"], kw["esa"]) and arch.w[p + "esa.conv4"][0] == kw["esa"]
        if "distilled" in kw:
            assert arch.w[p + "c4"][1] == kw["distilled"] and arch.w[p + "c5"] != net.arch.w[p + "c5"]
        assert arch.w[p + "c5"][1] == net.arch.w[p + "c5"][1]  # a block's output width is the trunk's
    x = jnp.asarray(random_image(20, 23))
    ref = np.asarray(net(x))
    np.testing.assert_allclose(np.asarray(wide(x)), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert params(wide) > params(net) and macs(wide, 40, 40)["total"] > macs(net, 40, 40)["total"]


def test_widen_refuses_to_narrow_and_merged_distilled():
    net = NETS["wide"]()
    with pytest.raises(WidenError, match="would narrow"):
        widen(net.arch, flat_params(net), esa=1)
    with pytest.raises(WidenError, match="would narrow"):
        widen(net.arch, flat_params(net), distilled=1)
    merged = NETS["merged"]()
    with pytest.raises(WidenError, match="merged"):
        widen(merged.arch, flat_params(merged), distilled=20)
