"""Weight conversion both ways (exact), our model files, and clear errors for bad checkpoints."""

import pickle

import numpy as np
import pytest
import torch

from helpers import random_image, shared_path
from prfdn_jax.checkpoint import (WeightsError, flat_params, load_any, load_model_file, load_torch,
                                  model_from_flat, save_model)
from prfdn_jax.inference import make_apply
from prfdn_jax.networks import build, default_arch
from prfdn_jax.spec import StateDictError, arch_from_state_dict
from prfdn_jax.state_dict import flat_params_from_state_dict, read_pth, state_dict_from_flat_params

RELEASED = ["rfdn_aim_x4", "prfdn_x2_pruned", "prfdn_x3_pruned", "rfdnb4s_branch_x4", "rfdnb2_branch_x4"]


@pytest.mark.parametrize("name", RELEASED)
def test_torch_flax_torch_round_trip_is_bit_exact(name):
    path = shared_path("weights", f"{name}.pth")
    sd = torch.load(path, weights_only=True)
    model = load_torch(path)
    back = state_dict_from_flat_params(flat_params(model), model.arch)
    assert list(back) == list(sd) or set(back) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


@pytest.mark.parametrize("layout,form", [("rfdn", "branch"), ("b4s", "wide"), ("b2s", "branch"), ("b2", "wide")])
def test_flax_torch_flax_round_trip_is_bit_exact(layout, form):
    model = build(default_arch(layout, nf=8, scale=3, form=form))
    flat = flat_params(model)
    sd = state_dict_from_flat_params(flat, model.arch)
    arch = arch_from_state_dict(sd, form)
    assert arch == model.arch
    back = flat_params_from_state_dict(sd, arch)
    assert set(back) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(back[k], flat[k], err_msg=k)


def test_model_file_round_trip(tmp_path):
    model = build(default_arch("b2s", nf=8, scale=2, form="wide"))
    path = save_model(tmp_path / "m.safetensors", model)
    back = load_any(path)
    assert back.arch == model.arch and type(back) is type(model)
    x = random_image()
    np.testing.assert_array_equal(make_apply(back)(x), make_apply(model)(x))
    assert oct(path.stat().st_mode & 0o777) != "0o600"


def _save(tmp_path, obj, name="bad.pth"):
    p = tmp_path / name
    torch.save(obj, p)
    return p


def _rfdn_sd(nf=8):
    model = build(default_arch("rfdn", nf=nf, scale=2))
    return {k: torch.from_numpy(v) for k, v in state_dict_from_flat_params(flat_params(model), model.arch).items()}


def test_missing_key_is_named(tmp_path):
    sd = _rfdn_sd()
    del sd["B2.esa.conv3.bias"]
    with pytest.raises(WeightsError, match=r"missing key 'B2.esa.conv3.bias'"):
        load_torch(_save(tmp_path, sd))


def test_extra_key_is_named(tmp_path):
    sd = _rfdn_sd()
    sd["B1.extra.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError, match=r"unexpected key 'B1.extra.weight'"):
        load_torch(_save(tmp_path, sd))


def test_misshaped_key_names_both_shapes(tmp_path):
    sd = _rfdn_sd()
    sd["B1.c5.weight"] = sd["B1.c5.weight"][:, :10]
    with pytest.raises(WeightsError, match=r"'B1.c5.weight': checkpoint \(8, 10, 1, 1\), expected \(8, 16, 1, 1\)"):
        load_torch(_save(tmp_path, sd))


def test_misshaped_key_against_a_given_architecture():
    sd = {k: v.numpy() for k, v in _rfdn_sd().items()}
    arch = arch_from_state_dict(sd)
    sd["LR_conv.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    with pytest.raises(StateDictError, match=r"'LR_conv.weight': checkpoint \(8, 8, 1, 1\), model \(8, 8, 3, 3\)"):
        flat_params_from_state_dict(sd, arch)


def test_not_a_state_dict(tmp_path):
    with pytest.raises(WeightsError, match="not a PyTorch state dict"):
        load_torch(_save(tmp_path, [1, 2, 3]))
    with pytest.raises(WeightsError, match="not an RFDN/PRFDN state dict"):
        load_torch(_save(tmp_path, {"conv.weight": torch.zeros(2, 3, 3, 3)}))
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(WeightsError, match="not a loadable PyTorch state dict"):
        load_torch(tmp_path / "text.pth")


def test_read_pth(tmp_path):
    path = shared_path("weights", "prfdn_x2_pruned.pth")
    sd, ref = read_pth(path), torch.load(path, weights_only=True)
    assert list(sd) == list(ref) and all(np.array_equal(sd[k], ref[k].numpy()) for k in ref)
    wrapped = {"state_dict": {"module.a.weight": torch.ones(2, 3, dtype=torch.float64)}}
    got = read_pth(_save(tmp_path, wrapped))
    assert list(got) == ["a.weight"] and got["a.weight"].dtype == np.float32
    for bad in ([1, 2, 3], {}, {"a": 1}):
        with pytest.raises(StateDictError, match=r"bad.pth: not a PyTorch state dict \(expected a dict of tensors\)$"):
            read_pth(_save(tmp_path, bad))
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(StateDictError, match=r"text.pth: not a loadable PyTorch state dict \(.+\)$") as e:
        read_pth(tmp_path / "text.pth")
    assert "\n" not in str(e.value)


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_loading_never_executes_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"fea_conv.weight": _Evil()}, f)
    with pytest.raises(WeightsError):
        load_any(p)
    with pytest.raises(StateDictError, match="not a loadable"):
        read_pth(p)
    assert not (tmp_path / "PWNED").exists()


def test_bad_model_file(tmp_path):
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(WeightsError, match="safetensors"):
        load_model_file(p)
    model = build(default_arch("rfdn", nf=8, scale=2))
    flat = flat_params(model)
    flat.pop("c.bias")
    with pytest.raises(WeightsError, match="missing parameter 'c.bias'"):
        model_from_flat(model.arch, flat)


def test_a_changed_concatenated_tensor_is_named_itself():
    """Widening one distilled conv breaks the concat after it: the message names that conv's key."""
    import pytest as _pytest

    sd = read_pth(shared_path("weights", "prfdn_x2_pruned.pth"))
    sd["B1234.c1_d.weight"] = np.zeros((14, 22, 1, 1), np.float32)
    sd["B1234.c1_d.bias"] = np.zeros(14, np.float32)
    with _pytest.raises(StateDictError, match=r"'B1234\.c1_d\.weight': checkpoint \(14, 22, 1, 1\), expected \(11"):
        arch_from_state_dict(sd)
