"""The training state and step (TrainState, step(state, batch)), the bounded jit caches, the one PyTorch-default
initialiser, and a run that leaves the caller's network as it was."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prfdn_jax import evaluate, train, train_step
from prfdn_jax.blocks import torch_uniform
from prfdn_jax.checkpoint import flat_params
from prfdn_jax.config import load_config
from prfdn_jax.metrics import rgb_to_y
from prfdn_jax.networks import default_arch

from helpers import ROOT, shared_path

SMOKE = str(ROOT / "experiments" / "smoke_x2.py")


@pytest.fixture(scope="module")
def cfg():
    return load_config(SMOKE).replace(ema_decay=0.9)


def _mesh():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def test_train_state_is_a_frozen_pytree_and_a_step_advances_it(cfg):
    repl, shard = _mesh()
    model = train.random_init(default_arch("rfdn", nf=4, scale=2, n_blocks=1))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, _ = train_step.make_optimizer(cfg)
    state = train_step.init_state(params, tx, repl, ema=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.step = 1
    n = len(jax.tree.leaves(params))
    assert len(jax.tree.leaves(state)) == 2 * n + len(jax.tree.leaves(state.opt_state)) + 1
    assert int(state.step) == 0 and state.step.dtype == jnp.int32
    assert train_step.init_state(params, tx, repl).ema is None
    step = train_step.make_train_step(graphdef, rest, tx, 255.0, repl, shard, ema_decay=0.9)
    rng = np.random.default_rng(0)
    batch = {"lr": jax.device_put(rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8), shard),
             "hr": jax.device_put(rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8), shard)}
    new, metrics = step(state, batch)
    assert isinstance(new, train_step.TrainState) and int(new.step) == 1 and bool(metrics["ok"])
    assert np.isfinite(float(metrics["loss"]))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params))]
    assert any(changed)
    # the EMA moved a tenth of the way: ema = 0.9 * params + 0.1 * new params
    for e, p0, p1 in zip(jax.tree.leaves(new.ema), jax.tree.leaves(params), jax.tree.leaves(new.params)):
        np.testing.assert_allclose(e, 0.9 * np.asarray(p0) + 0.1 * np.asarray(p1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss", ["l1", "l2", "l1_y"])
def test_the_step_loss_is_the_configured_pixel_loss(loss):
    """``loss='l1'``: mean |SR - HR| / 255; ``'l2'``: mean ((SR - HR) / 255)^2; ``'l1_y'``: the mean of the L1
    and the luma's L1 (``metrics.rgb_to_y``, what Y-PSNR measures), of the network before the step."""
    repl, shard = _mesh()
    model = train.random_init(default_arch("rfdn", nf=4, scale=2, n_blocks=1))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, _ = train_step.make_optimizer(load_config(SMOKE))
    step = train_step.make_train_step(graphdef, rest, tx, 255.0, repl, shard, loss=loss)
    rng = np.random.default_rng(1)
    lr, hr = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8), rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    _, metrics = step(train_step.init_state(params, tx, repl), {"lr": jax.device_put(lr, shard),
                                                                 "hr": jax.device_put(hr, shard)})
    sr = np.asarray(model(jnp.asarray(lr, jnp.float32)), np.float64)
    err = (sr - hr) / 255.0
    want = {"l1": np.mean(np.abs(err)), "l2": np.mean(err ** 2)}.get(loss)
    if loss == "l1_y":
        dy = np.stack([rgb_to_y(a) - rgb_to_y(b.astype(np.float64)) for a, b in zip(sr, hr)]) / 255.0
        want = (np.mean(np.abs(err)) + np.mean(np.abs(dy))) / 2
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)


def test_train_step_cache_keeps_the_most_recently_used(cfg, monkeypatch):
    monkeypatch.setattr(train_step, "_JIT_CACHE", OrderedDict())  # this process's compiled steps stay
    repl, shard = _mesh()
    graphdef, _, rest = nnx.split(train.random_init(default_arch("rfdn", nf=4, scale=2, n_blocks=1)), nnx.Param, ...)

    def get(i):  # one config per learning rate; nothing compiles before a call
        return train_step.cached_train_step(cfg.replace(lr=1e-4 * (i + 1)), graphdef, rest, repl, shard)

    first = [get(i) for i in range(train_step.JIT_CACHE_SIZE)]
    assert get(0) is first[0]  # a hit, and now the most recent
    get(100)  # one more: the least recently used (lr index 1) goes
    assert len(train_step._JIT_CACHE) == train_step.JIT_CACHE_SIZE
    assert get(0) is first[0] and get(1) is not first[1]
    for i in range(3 * train_step.JIT_CACHE_SIZE):
        get(i)
    assert len(train_step._JIT_CACHE) == train_step.JIT_CACHE_SIZE


def test_forward_cache_keeps_the_most_recently_used(monkeypatch):
    monkeypatch.setattr(evaluate, "_FWD_CACHE", OrderedDict())
    size = evaluate.FWD_CACHE_SIZE
    fwd = [evaluate.cached_forward(("net", i), {}) for i in range(size)]  # hashable stand-ins for graphdefs
    assert evaluate.cached_forward(("net", 0), {}) is fwd[0]
    evaluate.cached_forward(("net", size), {})
    assert [k[0] for k in evaluate._FWD_CACHE] == [("net", i) for i in [*range(2, size), 0, size]]
    for i in range(3 * size):
        evaluate.cached_forward(("other", i), {})
    assert len(evaluate._FWD_CACHE) == size


def test_one_pytorch_default_initialiser():
    arch = default_arch("rfdn", nf=4, scale=2, n_blocks=1)
    flat = flat_params(train.random_init(arch, seed=3))
    rng = np.random.default_rng(3)
    for key in sorted(k for k in flat if k.endswith(".kernel")):
        k, _, cin, _ = flat[key].shape[-4:]  # a branch stack leads with N
        np.testing.assert_array_equal(flat[key], torch_uniform(rng, flat[key].shape, k * k * cin))
        bias = key[: -len("kernel")] + "bias"
        np.testing.assert_array_equal(flat[bias], torch_uniform(rng, flat[bias].shape, k * k * cin))
        assert np.abs(flat[key]).max() <= 1 / np.sqrt(k * k * cin)


def test_run_leaves_the_given_network_unchanged(cfg, tmp_path):
    set14 = str(shared_path("data", "Set14", "HR"))
    model = train.init_model(cfg)
    impls = [(path, getattr(m, "impl", None)) for path, m in nnx.iter_modules(model)]
    assert all(i != "grouped" for _, i in impls)  # the CPU default (loop), resolved when it was built
    before = flat_params(model)
    trained, s = train.run(cfg.replace(impl="grouped"), tmp_path / "w", [set14], steps=1, model=model, verbose=False)
    assert [(path, getattr(m, "impl", None)) for path, m in nnx.iter_modules(model)] == impls
    after = flat_params(model)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert s["impl"] == "grouped" and any(not np.array_equal(v, before[k]) for k, v in flat_params(trained).items())
    assert all(getattr(m, "impl", None) in (None, "grouped") for _, m in nnx.iter_modules(trained))
