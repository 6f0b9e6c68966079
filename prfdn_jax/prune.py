"""Channel pruning of prfdn-jax networks with Torch-Pruning, optionally finetuning between steps.

The network goes to PyTorch (:func:`to_torch`), Torch-Pruning prunes it there
(:class:`converters.pruning.TorchPruner`), and the result comes back as a prfdn-jax network whose
architecture is read from the pruned tensor shapes (:func:`from_torch`). Two modes:

* **free** (default; the PRFDN team's recipe): a branch / wide net is first merged
  (:func:`prfdn_jax.reparam.wide_to_merged`, exact), then every layer of the dense merged layout may
  keep its own width. Result: form 'merged'. Note that merging makes the block-diagonal convs dense
  (b4s x4 at nf=50: 570,548 -> 2,212,552 parameters), so a channel ratio r leaves about (1-r)^2 of
  the MERGED count: ratio 0.5 ends near the unmerged size (564,424), while the team's released x2
  model kept 29,851 of its merged 2,196,316 (1.4 %, i.e. a channel ratio near 0.9).
* **uniform** (``uniform=True``): the wide net's grouped convs are pruned at the same positions in
  every branch, so the result is still a stacked network (form 'wide', every kernel with a leading
  branch axis N). RFDN (one branch) is always pruned this way (free == uniform for one branch).

Quality is not recovered by pruning alone: pass ``finetune`` (e.g. ``prfdn_jax.train.finetune``).

Needs PyTorch and Torch-Pruning (``pip install 'prfdn-jax[torch]'``), imported when a network is
pruned: importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

from prfdn_jax import macs
from prfdn_jax.checkpoint import flat_params, model_from_flat
from prfdn_jax.config import IMPORTANCES
from prfdn_jax.extras import require_torch
from prfdn_jax.reparam import wide_to_merged

__all__ = ["IMPORTANCES", "PruningError", "prune_model", "to_torch", "from_torch", "record"]
_BRIDGE = ("PruningError",)


def __getattr__(name: str):
    """The Torch-Pruning bridge's names (:mod:`converters.pruning`), imported on first use."""
    if name in _BRIDGE:
        import converters.pruning

        return getattr(converters.pruning, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_torch(model: nnx.Module):
    """prfdn-jax network -> PyTorch module (eval mode) computing the same function: a
    :class:`~converters.torch_modules.MergedNet` for a merged net, else a grouped ``WideNet``."""
    require_torch("converting a network to PyTorch")
    from converters.pruning import to_torch as bridge

    return bridge(flat_params(model), model.arch)


def from_torch(module, form: str | None = None) -> nnx.Module:
    """PyTorch module -> prfdn-jax network, widths read from its tensor shapes (see
    :func:`converters.pruning.from_torch` for ``form``)."""
    from converters.pruning import from_torch as bridge

    flat, arch = bridge(module, form)
    return model_from_flat(arch, flat)


def record(step: int, model: nnx.Module, val: Callable | None = None, size: tuple[int, int] | None = None,
           measure: Callable | None = None, **extra) -> dict:
    """One history entry: step, params, GMACs at a 1920x1080 input (total and conv), at ``size`` (H, W)
    as ``gmac`` when given, psnr if ``val``, and what ``measure(model) -> dict`` adds."""
    s = macs.summary(model, 1080, 1920)
    out = {"step": step, "params": s["params"], "gmac_1080p": s["gmac"], "gmac_conv_1080p": s["gmac_conv"],
           **extra}
    if size is not None:
        out["gmac"] = macs.summary(model, *size)["gmac"]
    if val is not None:
        out["psnr"] = float(val(model))
    if measure is not None:
        out.update(measure(model))
    return out


def prune_model(model: nnx.Module, *, ratio: float, steps: int, uniform: bool = False,
                importance: str = "magnitude", finetune: Callable | None = None, val: Callable | None = None,
                calib=None, seed: int = 0, target_gmac: float | None = None, target_params: int | None = None,
                size: tuple[int, int] = (1080, 1920), measure: Callable | None = None,
                progress: Callable | None = None, keep: tuple[str, ...] = ()) -> tuple[nnx.Module, list[dict]]:
    """Prune ``model``'s channels by ``ratio`` in ``steps`` iterative Torch-Pruning steps.

    ratio: target fraction of channels removed from every dependency group (local ranking; step k
      removes up to ``ratio * k / steps`` of the initial width; every group keeps >= 1 channel, >= 2
      per branch in uniform mode; ``keep``: conv families left whole, ``config.PRUNE_KEEP``). importance:
      'magnitude' (= 'l2'), 'l1', 'taylor' (``calib = (lr, hr)``, NHWC, 0-255) or 'random'. uniform: module doc.
    finetune: ``finetune(model, step) -> model`` called after each step (the widths must not change).
    val: ``val(model) -> PSNR`` recorded in the history; measure: ``measure(model) -> dict`` merged into
      every history entry (e.g. :func:`prfdn_jax.pareto.measurer`: latency and PSNR per set);
      progress: ``progress(entry)`` with each history entry as soon as it is recorded.

    target_gmac / target_params: a budget; pruning stops at the first step (after its finetune) whose
      network costs at most ``target_gmac`` GMAC at an input of ``size`` (H, W; ``macs.macs``, the NTIRE
      definition) and has at most ``target_params`` parameters. ``ratio``/``steps`` are then the
      largest ratio and the schedule; if the last step is still over budget a :class:`PruningError` says so.

    Returns ``(pruned model, history)``; history[0] is the network before pruning (after merging in
    free mode), then one entry per step: ``{'step', 'ratio', 'params', 'gmac_1080p', 'gmac_conv_1080p',
    ['psnr']}``. The input model is not modified.
    """
    torch = require_torch("pruning", pruning=True)
    from converters.pruning import PruningError, TorchPruner, check_prune_args
    from converters.state_dict import torch_state_dict

    check_prune_args(ratio, steps, importance, calib)
    arch = model.arch
    if arch.layout == "rfdn":  # one branch: free and uniform pruning are the same thing
        if arch.form == "merged":
            raise PruningError("a merged RFDN cannot be pruned; prune the RFDN itself")
        work, form = model, arch.form
    elif uniform:
        if arch.form == "merged":
            raise PruningError("uniform pruning needs a branch or wide network (a merged one has no branches)")
        work, form = model, "wide"
    else:
        work = model if arch.form == "merged" else wide_to_merged(model)
        form = "merged"
    torch.manual_seed(seed)
    module = to_torch(work)
    session = TorchPruner(module, ratio=ratio, steps=steps, importance=importance, calib=calib, keep=tuple(keep))
    history = [record(0, work, val, size, measure, ratio=0.0)]
    if progress is not None:
        progress(history[0])
    current = work

    def within(h: dict) -> bool:
        return ((target_gmac is None or h["gmac"] <= target_gmac)
                and (target_params is None or h["params"] <= target_params))

    budget = target_gmac is not None or target_params is not None
    try:
        for k in range(1, int(steps) + 1):
            session.step()
            current = from_torch(module, form)
            if finetune is not None:
                tuned = finetune(current, k)
                if dict(tuned.arch.widths) != dict(current.arch.widths):
                    raise PruningError(f"finetune changed the architecture at step {k}")
                current = tuned
            history.append(record(k, current, val, size, measure, ratio=session.target_ratio(k)))
            if progress is not None:
                progress(history[-1])
            if budget and within(history[-1]):
                break
            if k < steps and finetune is not None:
                session.load(torch_state_dict(flat_params(current), current.arch))
        else:
            if budget and not within(history[-1]):
                h = history[-1]
                raise PruningError(f"the budget was not reached: ratio {ratio} in {steps} steps leaves "
                                   f"{h['params']:,} params, {h['gmac']:.2f} GMAC at {size[0]}x{size[1]}; "
                                   "raise the ratio")
    finally:
        session.finish()
    return current, history
