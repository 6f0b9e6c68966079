"""The PyTorch reference's building blocks: conv helper, :class:`ESA`, :class:`RFDB`, :class:`SRFDB`.

Plain ``torch.nn`` (NCHW activations, OIHW weights; see :mod:`converters.torch_modules` for the networks).
Conv geometry, standard widths and the channel-coupling checks are the spec's (:mod:`prfdn_jax.spec`);
the forward passes are this reference's own. Widths are data: every block takes a dict
``{conv_name: (cin, cout)}``, so the same classes serve unpruned and arbitrarily pruned networks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from prfdn_jax import spec
from prfdn_jax.spec import Widths, block_errors, block_steps, describe, esa_errors, esa_widths, geometry

__all__ = ["ACT_SLOPE", "ESA", "RFDB", "SRFDB", "count_params", "esa_widths", "kernel_of", "rfdb_widths"]

ACT_SLOPE = spec.LRELU_SLOPE  # LeakyReLU negative slope used everywhere outside ESA


def kernel_of(name: str) -> tuple[int, int, int]:
    """(kernel, stride, padding) of the conv ``name`` (state-dict prefix such as 'B1234.esa.conv2', or a
    prfdn-jax name): the spec's :func:`~prfdn_jax.spec.geometry`, ValueError for an unknown name."""
    try:
        return geometry(name)
    except KeyError:
        raise ValueError(f"unknown conv name {name!r}") from None


def _conv(name: str, cin: int, cout: int, groups: int = 1) -> nn.Conv2d:
    """Conv ``name`` with ``cin -> cout`` per group; ``groups`` > 1 gives a grouped conv of
    ``groups*cin -> groups*cout`` channels (branch-major: group g is branch g)."""
    k, s, p = kernel_of(name)
    g = int(groups)
    return nn.Conv2d(g * int(cin), g * int(cout), k, stride=s, padding=p, groups=g, bias=True)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _raise_first(errs: list, where: str, names: Mapping[str, str] | None = None) -> None:
    """ValueError with the spec's text of the first coupling error (``names``: how to call each conv)."""
    if errs:
        name, *rest = errs[0]
        raise ValueError(describe(((names or {}).get(name, name), *rest), where))


def _sub(widths: Mapping[str, tuple[int, int]], prefix: str) -> Widths:
    """Entries of ``widths`` under ``prefix.`` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: tuple(v) for k, v in widths.items() if k.startswith(p)}


def count_params(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------- widths


rfdb_widths = spec.rfdb_widths  # re-exported for the reference's users


# --------------------------------------------------------------------------------------------- blocks

class ESA(nn.Module):
    """Enhanced spatial attention. ``widths``: dict over conv1, conv_f, conv_max, conv2, conv3, conv3_,
    conv4 (an 'esa.' prefix on the keys is accepted), or an int n for the standard f = n // 4 block.

    ``groups`` > 1: ``groups`` ESAs side by side on branch-major channels (the wide form); ``widths``
    are then per branch and every conv is a grouped conv (pooling and resizing act per channel)."""

    def __init__(self, widths: Mapping[str, tuple[int, int]] | int, groups: int = 1):
        super().__init__()
        if isinstance(widths, int):
            widths = esa_widths(widths)
        w = {k[4:] if k.startswith("esa.") else k: tuple(v) for k, v in widths.items()}
        _raise_first(esa_errors(w), "ESA: ")
        self.widths = w
        self.groups = int(groups)
        self.in_channels = self.out_channels = w["conv1"][0] * self.groups
        for name in spec.ESA_CONVS:
            setattr(self, name, _conv(f"esa.{name}", *w[name], groups=self.groups))
        self.relu = nn.ReLU()
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        v = F.max_pool2d(c1, kernel_size=7, stride=3)
        v = self.relu(self.conv_max(v))
        c3 = self.relu(self.conv3(v))
        c3 = self.conv3_(c3)
        c3 = F.interpolate(c3, size=(x.size(2), x.size(3)), mode="bilinear", align_corners=False)
        cf = self.conv_f(c1_)
        m = self.sigmoid(self.conv4(c3 + cf))
        return x * m


class RFDB(nn.Module):
    """Residual feature distillation block with ``steps`` distillation steps (3: RFDB, 1: SRFDB).

    ``widths`` maps local conv names (c{i}_d, c{i}_r, c4, [cat_p], c5, esa.*) to (cin, cout); ``steps``
    is inferred from the c{i}_r entries. An int ``widths`` builds the standard block on that many
    channels (then ``steps`` and ``cat_p`` are used). With a ``cat_p`` entry the concat before c5 goes
    through that 1x1 conv. No block-level residual.

    ``groups`` > 1 (the wide / re-parametrized form, used to prune uniformly): ``groups`` blocks side
    by side on branch-major channels, ``widths`` per branch. Every conv is a grouped conv except
    ``c5``, which is a DENSE 1x1 conv ``groups*cat -> groups*out`` reading the plain (tensor-major)
    concat ``[d1 (all branches), d2 (all), ..., r4 (all)]``: branch g's kernel sits in rows
    ``g*out:(g+1)*out`` and in the columns :func:`prfdn_jax.spec.c5_columns` gives; every other entry
    is zero. This folds the channel interleaving into c5, so a dependency-graph pruner sees only
    ``torch.cat`` and convs.
    """

    def __init__(self, widths: Mapping[str, tuple[int, int]] | int, steps: int | None = None,
                 cat_p: bool = False, groups: int = 1):
        super().__init__()
        if isinstance(widths, int):
            widths = rfdb_widths(widths, 3 if steps is None else steps, cat_p=cat_p)
        w = {k: tuple(int(a) for a in v) for k, v in widths.items()}
        inferred = block_steps(w)
        _check(steps is None or steps == inferred, f"RFDB: asked for {steps} steps but widths describe {inferred}")
        _raise_first(block_errors(w), "RFDB: ")
        has_cat_p = "cat_p" in w
        g = int(groups)
        _check(g >= 1, f"RFDB: groups must be >= 1, got {groups}")
        _check(g == 1 or not has_cat_p, "RFDB: a grouped (wide) block has no cat_p")
        self.widths = w
        self.steps = steps = inferred
        self.groups = g
        self.in_channels = w["c1_r"][0] * g
        self.out_channels = w["c5"][1] * g
        for i in range(1, steps + 1):
            setattr(self, f"c{i}_d", _conv(f"c{i}_d", *w[f"c{i}_d"], groups=g))
            setattr(self, f"c{i}_r", _conv(f"c{i}_r", *w[f"c{i}_r"], groups=g))
        self.c4 = _conv("c4", *w["c4"], groups=g)
        self.c5 = _conv("c5", w["c5"][0] * g, w["c5"][1] * g)  # dense: see the class doc
        self.act = nn.LeakyReLU(ACT_SLOPE)
        self.esa = ESA(_sub(w, "esa"), groups=g)
        self.cat_p = _conv("cat_p", *w["cat_p"]) if has_cat_p else None
        if g > 1:
            with torch.no_grad():
                self.c5.weight.mul_(self.c5_mask().to(self.c5.weight.dtype)[:, :, None, None])

    def branch_widths(self, prefix: str = "") -> Widths:
        """Per-branch ``{local conv name: (cin, cout)}`` read from the current convs (valid after pruning);
        ValueError if a conv's width is not divisible by the branch count (``prefix`` names the block)."""
        g, out = self.groups, {}
        for name, conv in self.named_modules():
            if isinstance(conv, nn.Conv2d):
                _check(conv.in_channels % g == 0 and conv.out_channels % g == 0,
                       f"WideNet: {prefix}{name} has {conv.in_channels}->{conv.out_channels} channels, "
                       f"not divisible by its {g} branches")
                out[name] = (conv.in_channels // g, conv.out_channels // g)
        return out

    def c5_columns(self, branch: int) -> list[int]:
        """Input columns of ``c5`` that belong to ``branch`` (grouped form), in the branch's own
        ``[d1, d2, ..., r4]`` order; computed from the current conv widths (valid after pruning)."""
        return spec.c5_columns(self.branch_widths(), "", self.groups, branch)

    def c5_mask(self) -> torch.Tensor:
        """``(out, in)`` boolean mask of c5's block structure (all True for groups == 1)."""
        g = self.groups
        mask = torch.zeros(self.c5.out_channels, self.c5.in_channels, dtype=torch.bool)
        out = self.c5.out_channels // g
        for b in range(g):
            mask[b * out:(b + 1) * out, self.c5_columns(b)] = True
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distilled = []
        r = x
        for i in range(1, self.steps + 1):
            distilled.append(self.act(getattr(self, f"c{i}_d")(r)))
            r = self.act(getattr(self, f"c{i}_r")(r) + r)
        distilled.append(self.act(self.c4(r)))
        out = torch.cat(distilled, dim=1)
        if self.cat_p is not None:
            out = self.cat_p(out)
        return self.esa(self.c5(out))


class SRFDB(RFDB):
    """The PRFDN team's small RFDB (class RFDBS upstream): one distillation step."""

    def __init__(self, widths: Mapping[str, tuple[int, int]] | int, cat_p: bool = False, groups: int = 1):
        super().__init__(widths, steps=1, cat_p=cat_p, groups=groups)


def _upsampler(nf: int, scale: int, out_nc: int = 3) -> nn.Sequential:
    return nn.Sequential(_conv("upsampler.0", nf, out_nc * scale * scale), nn.PixelShuffle(scale))
