"""The network topology as data: conv geometry, layouts, forms, standard widths, :class:`Arch`.

Pure Python (no jax, no torch). Every other module (JAX blocks and networks, the PyTorch reference,
the state-dict tables, re-parametrization and the pruning bridge) reads these tables; none keeps a
copy.

Conv names are prfdn-jax's: ``fea``, ``srfdb.<conv>``, ``stages.<d>.<conv>``, ``c``, ``LR_conv``,
``upsampler``, and in the merged form ``split_left``, ``split_right``, ``split``, ``cat_p``. Block convs
carry the released names (``c1_d``, ``c2_r``, ``c4``, ``cat_p``, ``c5``, ``esa.conv1`` ...).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import NamedTuple

Widths = dict[str, tuple[int, int]]

LRELU_SLOPE = 0.05  # LeakyReLU slope everywhere outside ESA (ESA uses ReLU)
MIN_SIZE = 15       # ESA's valid 3x3 stride-2 conv and 7x7 max-pool need at least 15x15 pixels

# conv leaf name -> (kernel, stride, padding); c_d / c_r stand for c{i}_d / c{i}_r
GEOMETRY: dict[str, tuple[int, int, int]] = {
    "fea": (3, 1, 1), "c_d": (1, 1, 0), "c_r": (3, 1, 1), "c4": (3, 1, 1), "cat_p": (1, 1, 0), "c5": (1, 1, 0),
    "conv1": (1, 1, 0), "conv_f": (1, 1, 0), "conv_max": (3, 1, 1), "conv2": (3, 2, 0), "conv3": (3, 1, 1),
    "conv3_": (3, 1, 1), "conv4": (1, 1, 0),
    "split_left": (1, 1, 0), "split_right": (1, 1, 0), "split": (1, 1, 0),
    "c": (1, 1, 0), "LR_conv": (3, 1, 1), "upsampler": (3, 1, 1),
}
ESA_CONVS = ("conv1", "conv_f", "conv_max", "conv2", "conv3", "conv3_", "conv4")


def geometry(name: str) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a conv by name, prfdn-jax or released.

    ``stages.0.c2_r``, ``esa.conv2``, ``B1234.esa.conv2``, ``fea_conv12``, ``c.0``, ``upsampler.0`` and
    ``fea.3`` (a branch of the PyTorch wide reference) all work. Raises KeyError for unknown names.
    """
    parts = name.split(".")
    leaf = parts[-2] if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
    leaf = re.sub(r"^c\d+_([dr])$", r"c_\1", leaf)
    leaf = re.sub(r"^fea_conv\d*$", "fea", leaf)
    if leaf not in GEOMETRY:
        raise KeyError(name)
    return GEOMETRY[leaf]


class Layout(NamedTuple):
    """Branches N, how many of them start with an SRFDB (S), RFDBs per branch D (None: any, RFDN)."""

    branches: int
    srfdb: int
    depth: int | None


# The one table of layouts: networks, key names, detection, the PyTorch reference and the CLI read it.
LAYOUTS: dict[str, Layout] = {
    "rfdn": Layout(1, 0, None),  # fea_conv -> B1 -> ... -> Bn: RFDN itself
    "b4s": Layout(4, 3, 1),      # branch 0: B1(fea); branch k: B{k+1}(B2S{k}(fea_conv{k}))
    "b2s": Layout(2, 1, 2),      # B2(B1(fea)), B4(B3(B2S2(fea_conv2)))
    "b2": Layout(2, 0, 2),       # as b2s without the SRFDB
}
FORMS = ("branch", "wide", "merged")
_BUILTIN = frozenset(LAYOUTS)


def register_layout(name: str, layout: Layout) -> Layout:
    """Add ``layout`` to :data:`LAYOUTS` under ``name`` (the one place a new layout goes); returns it.

    Branches N >= 1, 0 <= S <= N (the last S branches start with an SRFDB), D >= 1 (None: any, only
    for one branch). ValueError if ``name`` is another layout's or the layout is already known (two
    names for one layout could not be told apart in a state dict). :func:`unregister_layout` undoes it.
    """
    layout = Layout(*layout)
    n, s, d = layout
    if n < 1 or not 0 <= s <= n or (d is None and n != 1) or (d is not None and d < 1):
        raise ValueError(f"bad layout {name!r}: {layout}")
    if LAYOUTS.get(name, layout) != layout:
        raise ValueError(f"layout {name!r} is already {LAYOUTS[name]}")
    same = [k for k, v in LAYOUTS.items() if v == layout and k != name]
    if same:
        raise ValueError(f"layout {name!r} is the same as {same[0]!r}")
    LAYOUTS[name] = layout
    return layout


def unregister_layout(name: str) -> None:
    """Remove a layout added by :func:`register_layout` (no-op if absent; the built-in ones stay)."""
    if name in _BUILTIN:
        raise ValueError(f"layout {name!r} is built in")
    LAYOUTS.pop(name, None)


def branch_layouts() -> tuple[str, ...]:
    """The layouts with more than one branch (PRFDN's; the others are RFDN), read now from :data:`LAYOUTS`."""
    return tuple(k for k, lay in LAYOUTS.items() if lay.branches > 1)


def scale_from_upsampler(out_channels: int) -> int:
    """The PixelShuffle factor r of an upsampler conv with ``3*r*r`` outputs; ValueError otherwise."""
    r = math.isqrt(max(int(out_channels), 0) // 3)
    if r < 1 or 3 * r * r != out_channels:
        raise ValueError(f"the upsampler has {out_channels} outputs, not 3*r*r for an integer r")
    return r


# ----------------------------------------------------------------------------- Arch
@dataclasses.dataclass(frozen=True)
class Arch:
    """Architecture as data. ``widths`` maps conv names to ``(cin, cout)`` (per branch when stacked)."""

    form: str
    layout: str
    scale: int
    widths: tuple[tuple[str, tuple[int, int]], ...]

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"unknown form {self.form!r}; expected one of {FORMS}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {tuple(LAYOUTS)}")

    @classmethod
    def make(cls, form: str, layout: str, scale: int, widths: Mapping[str, tuple[int, int]]) -> "Arch":
        return cls(form, layout, int(scale), tuple(sorted((k, (int(a), int(b))) for k, (a, b) in widths.items())))

    @property
    def w(self) -> Widths:
        return dict(self.widths)

    def sub(self, prefix: str) -> Widths:
        """Widths of the block under ``prefix`` (e.g. ``stages.0.``), keys relative to it."""
        return {k[len(prefix):]: v for k, v in self.widths if k.startswith(prefix)}

    @property
    def branches(self) -> int:
        """N: parallel branches (merged form: input copies of the first conv)."""
        return LAYOUTS[self.layout].branches

    @property
    def n_srfdb(self) -> int:
        """S: branches that start with an SRFDB (0 if the widths have none)."""
        return LAYOUTS[self.layout].srfdb if any(k.startswith("srfdb.") for k, _ in self.widths) else 0

    @property
    def depth(self) -> int:
        """D: RFDB stages per branch."""
        return len({int(m.group(1)) for k, _ in self.widths if (m := re.match(r"stages\.(\d+)\.", k))})

    @property
    def nf(self) -> int:
        return self.w["LR_conv"][1]

    def replace(self, **kw) -> "Arch":
        return dataclasses.replace(self, **kw)

    def to_json(self) -> str:
        return json.dumps({"form": self.form, "layout": self.layout, "scale": self.scale,
                           "widths": {k: list(v) for k, v in self.widths}})

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        d = json.loads(text)
        return cls.make(d["form"], d["layout"], d["scale"], {k: tuple(v) for k, v in d["widths"].items()})


# ----------------------------------------------------------------------------- standard widths
def esa_widths(n: int, f: int | None = None) -> Widths:
    """ESA on ``n`` channels with ``f`` (default n // 4) inner channels, keys ``conv1`` ... ``conv4``."""
    f = n // 4 if f is None else f
    return {"conv1": (n, f), "conv_f": (f, f), "conv_max": (f, f), "conv2": (f, f), "conv3": (f, f),
            "conv3_": (f, f), "conv4": (f, n)}


def rfdb_widths(n: int, steps: int = 3, *, cat_p: bool = False, dc: int | None = None,
                f: int | None = None) -> Widths:
    """Standard RFDB (steps=3) or SRFDB (steps=1) on n channels: dc = n//2 distilled, ESA f = n//4.

    With ``cat_p`` a square (steps+1)*dc permutation conv sits between the concat and ``c5``.
    """
    dc = n // 2 if dc is None else dc
    w: Widths = {}
    for i in range(1, steps + 1):
        w[f"c{i}_d"] = (n, dc)
        w[f"c{i}_r"] = (n, n)
    w["c4"] = (n, dc)
    cat_w = (steps + 1) * dc
    if cat_p:
        w["cat_p"] = (cat_w, cat_w)
    w["c5"] = (cat_w, n)
    w.update({f"esa.{k}": v for k, v in esa_widths(n, f).items()})
    return w


def block_steps(widths: Mapping[str, tuple[int, int]], prefix: str = "") -> int:
    """Distillation steps of the block under ``prefix`` (count of its ``c{i}_r`` convs)."""
    return sum(1 for k in widths if re.fullmatch(re.escape(prefix) + r"c\d+_r", k))


def distilled_names(steps: int) -> list[str]:
    """The convs whose outputs are concatenated before ``c5``, in concat order: c1_d .. c{steps}_d, c4."""
    return [f"c{i}_d" for i in range(1, steps + 1)] + ["c4"]


def default_arch(layout: str, *, nf: int = 50, scale: int = 4, n_blocks: int | None = None,
                 form: str = "branch") -> Arch:
    """Unpruned branch/wide architecture: nf channels, D = n_blocks (rfdn, default 4) or the layout's."""
    lay = LAYOUTS[layout]
    depth = lay.depth if lay.depth is not None else (4 if n_blocks is None else n_blocks)
    w: Widths = {"fea": (3, nf)}
    if lay.srfdb:
        w.update({f"srfdb.{k}": v for k, v in rfdb_widths(nf, 1).items()})
    for d in range(depth):
        w.update({f"stages.{d}.{k}": v for k, v in rfdb_widths(nf, 3).items()})
    w.update({"c": (lay.branches * depth * nf, nf), "LR_conv": (nf, nf), "upsampler": (nf, 3 * scale * scale)})
    return Arch.make(form, layout, scale, w)


def merged_widths(arch: Arch) -> Widths:
    """Widths of the merged (dense) form of a branch/wide ``arch``, before any pruning.

    Every stacked conv becomes one block-diagonal conv of N times the widths; ``split_left`` /
    ``split_right`` select the plain and the SRFDB branches, ``split`` branch 0's features (the global
    residual); a ``cat_p`` permutation turns each tensor-major concat of several branches back into
    branch-major order (in every block with more than one branch, and before ``c`` when D > 1).
    """
    if arch.form == "merged":
        raise ValueError("already merged")
    w, n, s, depth, nf = arch.w, arch.branches, arch.n_srfdb, arch.depth, arch.w["fea"][1]
    out: Widths = {"fea": (3 * n, n * nf)}
    if s:
        out["split_left"] = (n * nf, (n - s) * nf)
        out["split_right"] = (n * nf, s * nf)
    for part, nb in ([("srfdb", s)] if s else []) + [(f"stages.{d}", n) for d in range(depth)]:
        sub = {k: v for k, v in w.items() if k.startswith(part + ".")}
        out.update({k: (nb * a, nb * b) for k, (a, b) in sub.items()})
        if nb > 1:
            cat_w = nb * sum(sub[f"{part}.{c}"][1] for c in distilled_names(block_steps(sub, part + ".")))
            out[f"{part}.cat_p"] = (cat_w, cat_w)
    if depth > 1 and n > 1:
        cat_w = n * sum(w[f"stages.{d}.c5"][1] for d in range(depth))
        out["cat_p"] = (cat_w, cat_w)
    out.update({"c": w["c"], "LR_conv": w["LR_conv"], "split": (n * nf, nf), "upsampler": w["upsampler"]})
    return out
