"""The Torch-Pruning bridge: ``(flat parameters, Arch)`` <-> PyTorch modules Torch-Pruning prunes; the pruning.

Two PyTorch forms, both from :mod:`converters.torch_modules`, chosen so that Torch-Pruning's
dependency graph (which knows convs, ``torch.cat`` and element-wise ops) sees every channel coupling:

* **free** mode prunes the dense merged layout (:class:`~converters.torch_modules.MergedNet`, the
  team's approach): split / concat-permutation are real 1x1 convs (``split_left``, ``split_right``,
  ``split``, ``cat_p``), so every layer may end up with its own width.
* **uniform** mode prunes the wide layout (:class:`~converters.torch_modules.WideNet`): every stacked
  layer is a grouped conv (groups = branches). Torch-Pruning averages importance over the groups and
  removes the same positions in every group, so the result is still a stacked network. The
  branch-interleaving concats of the JAX wide form are folded into dense, block-structured 1x1 convs
  (each block's ``c5`` and the fusion conv ``c``), which is exact and leaves only ``torch.cat``.

Why not prune the merged layout with ``out_channel_groups`` for uniform mode: there the selector and
permutation convs decouple the channels (pruning the first conv's channel j of branch 0 would not
remove the matching channel of LR_conv), and a pruned permutation is no longer a permutation, so the
result could not be folded back into stacked kernels. The grouped form has no such layers.

Traps of Torch-Pruning 1.6.1 handled here (each is tested in ``tests/test_pruning.py``):

* PixelShuffle is treated as element-wise: the conv feeding it (``upsampler.0``) is in
  ``ignored_layers`` and the output width ``3*r*r`` is checked after every step.
* ``torch.split`` / ``torch.chunk`` / slicing / reshapes / unknown ops: the traced graph is checked
  against an allow-list (convs, ``cat``, and the element-wise ops the networks use) before pruning.
* ``round_to`` rounds kept channels DOWN: not used (kept = ``int(initial * (1 - ratio))`` per group).
* Local pruning can ask to remove every channel of a narrow layer (keep ``int(5 * 0.1) = 0``); TP
  then silently skips that whole group (``check_pruning_group``), leaving it unpruned. Instead every
  group goes through a guard that keeps at least ``min_keep`` channels (per branch in uniform mode),
  the most important ones.
* Partial roots: a grouped dependency group rooted at a layer that sees only some branches (the
  first conv of one branch, LR_conv, the SRFDB's output convs) would reshape the wrong number of
  scores into groups; in uniform mode only full-width layers may be roots (``root_module_types``).
* A grouped conv with one channel per group looks depthwise to Torch-Pruning (``groups ==
  out_channels``) and would be pruned as such: uniform mode keeps at least 2 channels per branch and
  refuses networks that already have such a layer.

In the wide form the first convs of branches 0 and of the SRFDB branches fall into two dependency
groups (branch 0's output is coupled to the global residual and to the stage input; the others to
the SRFDB's residual input); both have the same initial width and target, so they keep the same
count, which is what the stacked JAX form needs (checked on import: :meth:`WideNet.branch_widths`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from converters.state_dict import arrays, torch_state_dict
from converters.torch_modules import MERGED_LAYOUTS, MergedNet, WideNet
from prfdn_jax.config import IMPORTANCES, PRUNE_KEEP
from prfdn_jax.spec import ESA_CONVS, Arch, StateDictError, arch_from_state_dict
from prfdn_jax.state_dict import flat_from_wide_state_dict, flat_params_from_state_dict

# Element-wise autograd ops the reference networks use; anything else in the traced graph is refused.
_ELEMENTWISE_OK = re.compile(
    r"^(Add|Mul|Sigmoid|LeakyRelu|Relu|MaxPool2DWithIndices|UpsampleBilinear2D|PixelShuffle)Backward\d*$")


def check_prune_args(ratio: float, steps: int, importance: str, calib) -> None:
    """Raise :class:`PruningError` for a ratio outside [0, 1), steps < 1, or an unusable importance."""
    if importance not in IMPORTANCES:
        raise PruningError(f"unknown importance {importance!r}; choose from {', '.join(IMPORTANCES)}")
    if not 0.0 <= ratio < 1.0:
        raise PruningError(f"ratio must be in [0, 1), got {ratio}")
    if int(steps) < 1:
        raise PruningError(f"steps must be >= 1, got {steps}")
    if importance == "taylor" and calib is None:
        raise PruningError("taylor importance needs calibration data (calib=(lr, hr) arrays)")


class PruningError(ValueError):
    """Pruning cannot proceed or produced an inconsistent network (one-line message)."""


# ============================================================================ (flat, Arch) <-> PyTorch
# The nnx glue (a prfdn-jax model <-> (flat, Arch)) is prfdn_jax.prune.to_torch / from_torch.

def to_torch(flat: Mapping[str, np.ndarray], arch: Arch) -> nn.Module:
    """Flat prfdn-jax parameters of ``arch`` -> PyTorch module (eval mode) computing the same function.

    Merged nets -> :class:`MergedNet` (released key names); branch / wide / RFDN nets -> the grouped
    :class:`WideNet` (RFDN is its one-branch case).
    """
    if arch.form == "merged":
        if arch.layout not in MERGED_LAYOUTS:
            raise PruningError(f"no PyTorch merged layout for {arch.layout!r} "
                               f"(merged {', '.join(MERGED_LAYOUTS)} only)")
        return MergedNet.from_state_dict(torch_state_dict(flat, arch))
    net = WideNet(arch.w, arch.layout, arch.scale)
    net.load_state_dict(torch_state_dict(flat, arch), strict=True)
    return net.eval()


def wide_arch(module: WideNet, form: str = "wide") -> Arch:
    """The prfdn-jax architecture of a (possibly pruned) torch :class:`WideNet`."""
    try:
        widths = module.branch_widths()
    except ValueError as e:
        raise PruningError(str(e)) from None
    return Arch.make(form, module.layout, module.scale, widths)


def from_torch(module: nn.Module, form: str | None = None) -> tuple[dict[str, np.ndarray], Arch]:
    """PyTorch module -> ``(flat prfdn-jax parameters, Arch)``, the widths read from its tensor shapes.

    :class:`WideNet` -> form ``form`` (default 'wide'; 'branch' gives the same parameters);
    :class:`MergedNet` -> 'merged'; the reference ``RFDN`` / ``BranchNet`` -> ``form`` or 'branch'.
    A WideNet whose dense ``c5`` has weight outside its branch blocks raises :class:`PruningError`.
    """
    sd = arrays(module.state_dict())
    if isinstance(module, WideNet):
        form = form or "wide"
        if form not in ("wide", "branch"):
            raise PruningError(f"a WideNet converts to form 'wide' or 'branch', not {form!r}")
        arch = wide_arch(module, form)
        try:
            return flat_from_wide_state_dict(sd, arch), arch
        except StateDictError as e:
            raise PruningError(str(e)) from None
    if isinstance(module, MergedNet):
        if form not in (None, "merged"):
            raise PruningError(f"a MergedNet converts to form 'merged', not {form!r}")
        arch = arch_from_state_dict(sd)
    else:
        arch = arch_from_state_dict(sd, form or "branch")
    return flat_params_from_state_dict(sd, arch), arch


# ============================================================================ pruning

class _RootConv(nn.Conv2d):
    """Marks a conv allowed to root a dependency group in uniform mode (see module doc)."""


def _non_roots(module: WideNet) -> set[nn.Module]:
    """Layers of a WideNet whose output covers only part of its dependency group."""
    out = set(module.fea) | {module.LR_conv, module.upsampler[0]}
    if module.srfdb is not None:
        out |= {module.srfdb.c5, module.srfdb.esa.conv4}
    return out


def kept_convs(module: nn.Module, keep: tuple[str, ...]) -> list[nn.Module]:
    """The convs of ``module`` whose outputs a pruning with ``keep`` (names from ``PRUNE_KEEP``) leaves whole."""
    bad = [k for k in keep if k not in PRUNE_KEEP]
    if bad:
        raise PruningError(f"unknown --keep {bad[0]!r}; choose from {', '.join(PRUNE_KEEP)}")
    out = []
    for name, m in module.named_modules():
        parts = name.split(".")
        if not isinstance(m, nn.Conv2d) or len(parts) < 2:
            continue
        in_esa = parts[-2] == "esa"
        if ("esa" in keep and in_esa and parts[-1] in ESA_CONVS and parts[-1] != "conv4"
                or "distilled" in keep and not in_esa and re.fullmatch(r"c\d+_d|c4", parts[-1])):
            out.append(m)
    return out


def make_importance(name: str):
    """Torch-Pruning importance: 'magnitude' (= 'l2', group L2 norm, TP's default), 'l1', 'taylor'
    (|w * dL/dw|, needs calibration data), 'random'."""
    import torch_pruning as tp

    if name in ("magnitude", "l2"):
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "random":
        return tp.importance.RandomImportance()
    raise PruningError(f"unknown importance {name!r}; choose from {', '.join(IMPORTANCES)}")


def check_graph(dg) -> None:
    """Refuse traced graphs with ops Torch-Pruning would mis-couple (split/chunk, slicing, reshapes,
    unbind, expand, or element-wise ops outside the allow-list)."""
    import torch_pruning as tp

    ops = tp.ops
    for m in dg.module2node:
        if isinstance(m, (nn.Conv2d, ops._ConcatOp, ops._OutputOp)):
            continue
        if isinstance(m, ops._ElementWiseOp) and _ELEMENTWISE_OK.match(str(m._grad_fn)):
            continue
        if isinstance(m, (ops._SplitOp, ops._SliceOp)):
            raise PruningError(f"the traced network splits tensors ({m}); Torch-Pruning prunes split / chunk "
                               "sections unevenly: express channel selection as 1x1 convs or torch.cat")
        raise PruningError(f"the traced network uses {m}, which Torch-Pruning may couple wrongly")


class TorchPruner:
    """One iterative Torch-Pruning session on a :class:`MergedNet` (free) or :class:`WideNet` (uniform).

    ``step()`` runs one of ``steps`` pruning steps (target channel ratio ``ratio * k / steps`` of each
    dependency group's initial width, TP's linear schedule, local ranking); the module is modified
    in place. Between steps, ``load(state_dict)`` refreshes its weights (e.g. after finetuning in JAX)
    without changing the module objects TP's graph refers to.

    ``protect_output=False`` leaves the conv feeding PixelShuffle prunable: only to demonstrate the
    trap (``check`` then refuses the result). ``keep`` names conv families (``config.PRUNE_KEEP``) whose
    outputs are not pruned (a pruning ratio of 0 for them); their inputs still follow the trunk.
    """

    def __init__(self, module: nn.Module, *, ratio: float, steps: int, importance: str = "magnitude",
                 example_size: int = 24, calib: tuple[np.ndarray, np.ndarray] | None = None,
                 protect_output: bool = True, keep: tuple[str, ...] = ()):
        import torch_pruning as tp

        if not isinstance(module, (MergedNet, WideNet)):
            raise PruningError(f"can prune a MergedNet or a WideNet, not {type(module).__name__}")
        check_prune_args(ratio, steps, importance, calib)
        self.module = module.eval()
        self.uniform = isinstance(module, WideNet)
        self.steps, self.ratio, self.importance_name = int(steps), float(ratio), importance
        self.calib = calib
        self.out_channels = 3 * module.scale * module.scale
        self.example = torch.rand(1, 3, example_size, example_size) * 255
        multi = self.uniform and module.branches > 1
        self.min_keep = 2 if multi else 1
        kw = {"pruning_ratio_dict": {m: 0.0 for m in kept_convs(module, tuple(keep))}}
        if self.uniform:
            for m in module.modules():
                if isinstance(m, nn.Conv2d) and m.groups > 1 and m.out_channels == m.groups:
                    raise PruningError("a grouped conv has one channel per branch; Torch-Pruning would treat "
                                       "it as depthwise: too narrow to prune uniformly")
            non_roots = _non_roots(module)
            for m in module.modules():
                if type(m) is nn.Conv2d and m not in non_roots:
                    m.__class__ = _RootConv
            kw["root_module_types"] = [_RootConv]
        try:
            self.pruner = tp.pruner.MetaPruner(
                module, self.example, importance=make_importance(importance), pruning_ratio=self.ratio,
                iterative_steps=self.steps, ignored_layers=[module.upsampler] if protect_output else [],
                global_pruning=False, round_to=None, **kw)
            self.dg = self.pruner.DG
            check_graph(self.dg)
        except Exception:
            self.finish()
            raise
        self.done = 0

    # -- helpers
    def _groups(self, group) -> int:
        return max([1] + [dep.target.module.groups for dep, _ in group
                          if isinstance(dep.target.module, nn.Conv2d)])

    def _guard(self, group):
        """Keep >= min_keep channels (per branch) in the group; check uniformity across branches."""
        dep = group[0].dep
        m, fn = dep.target.module, dep.handler
        if not self.dg.is_out_channel_pruning_fn(fn):
            return group
        idxs = sorted(int(i.idx) if hasattr(i, "idx") else int(i) for i in group[0].idxs)
        total = self.dg.get_out_channels(m)
        g = self._groups(group)
        per = total // g
        pos = sorted({i % per for i in idxs})
        if g > 1 and idxs != sorted(p + b * per for b in range(g) for p in pos):
            raise PruningError(f"Torch-Pruning chose different channels in different branches at {m}")
        if per - len(pos) >= self.min_keep:
            return group
        n_prune = per - self.min_keep
        if n_prune <= 0:
            return None
        full = self.dg.get_pruning_group(m, fn, list(range(total)))
        imp = self.pruner.estimate_importance(full).reshape(g, per).mean(0)
        pos = sorted(pos, key=lambda p: float(imp[p]))[:n_prune]
        return self.dg.get_pruning_group(m, fn, sorted(p + b * per for b in range(g) for p in pos))

    def _gradients(self) -> None:
        lr, hr = self.calib
        x = torch.from_numpy(np.asarray(lr, np.float32)).permute(0, 3, 1, 2)
        y = torch.from_numpy(np.asarray(hr, np.float32)).permute(0, 3, 1, 2)
        self.module.zero_grad()
        with torch.enable_grad():
            loss = (self.module(x) - y).abs().mean()
            loss.backward()

    def check(self) -> None:
        """The output stays RGB at the right scale and (uniform) the branches stay equal."""
        up = self.module.upsampler[0]
        if up.out_channels != self.out_channels:
            raise PruningError(f"upsampler.0 has {up.out_channels} outputs after pruning, not {self.out_channels} "
                               "(3*r*r): PixelShuffle's input was pruned")
        with torch.no_grad():
            y = self.module(self.example)
        if y.shape[1] != 3:
            raise PruningError(f"pruned network outputs {y.shape[1]} channels, not 3")
        if self.uniform:
            wide_arch(self.module)

    # -- API
    def step(self) -> None:
        if self.done >= self.steps:
            raise PruningError(f"all {self.steps} pruning steps are done")
        if self.importance_name == "taylor":
            self._gradients()
        # TP silently skips a group whose schedule would empty a layer (DG.check_pruning_group): let
        # every group through to the guard, which keeps min_keep channels, then check it for real.
        check = self.dg.check_pruning_group
        self.dg.check_pruning_group = lambda group: True
        try:
            for group in self.pruner.step(interactive=True):
                group = self._guard(group)
                if group is None:
                    continue
                if not check(group):
                    raise PruningError(f"pruning group rooted at {group[0].dep.target.module} would empty a layer")
                group.prune()
        finally:
            del self.dg.check_pruning_group
        self.done += 1
        if self.importance_name == "taylor":
            self.module.zero_grad(set_to_none=True)
        self.check()

    def target_ratio(self, step: int | None = None) -> float:
        """TP's scheduled channel ratio after ``step`` (default: the steps done)."""
        return float(self.pruner.per_step_pruning_ratio[self.done if step is None else step])

    def load(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy new weights into the (pruned) module in place; shapes must match."""
        try:
            self.module.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            msg = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())[:300]
            raise PruningError(f"finetuned weights do not fit the pruned network: {msg}") from None

    def finish(self) -> nn.Module:
        """The pruned module, with the root markers removed."""
        for m in self.module.modules():
            if type(m) is _RootConv:
                m.__class__ = nn.Conv2d
        return self.module


def prune_torch(module: nn.Module, *, ratio: float, steps: int = 1, importance: str = "magnitude",
                calib=None) -> nn.Module:
    """Prune a :class:`MergedNet` (free) or :class:`WideNet` (uniform) in place, no finetuning."""
    session = TorchPruner(module, ratio=ratio, steps=steps, importance=importance, calib=calib)
    for _ in range(steps):
        session.step()
    return session.finish()


__all__ = ["IMPORTANCES", "PruningError", "TorchPruner", "check_graph", "check_prune_args", "from_torch",
           "kept_convs", "make_importance", "prune_torch", "to_torch", "wide_arch"]
