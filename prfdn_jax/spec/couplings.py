"""The channel couplings of every form: the one checker, naming the conv that breaks one.

A coupling is "conv X must read (or write) as many channels as its neighbour gives (or needs)": the
residual adds inside an RFDB, the concat before ``c5``, ESA's chain, the fusion concat, the global
residual, PixelShuffle's ``3*r*r``. Pruned networks may have any width per conv as long as these hold.
"""

from __future__ import annotations

from collections.abc import Mapping

from prfdn_jax.spec.topology import ESA_CONVS, LAYOUTS, Arch, block_steps, distilled_names

# (conv, 'in' | 'out' | 'missing', expected, actual)
Error = tuple[str, str, int, int]


class _Checker:
    def __init__(self, widths: Mapping[str, tuple[int, int]]):
        self.w, self.errs = widths, []

    def need(self, name: str, side: str, expected: int) -> None:
        actual = self.w[name][0 if side == "in" else 1]
        if actual != expected:
            self.errs.append((name, side, expected, actual))

    def esa(self, p: str, n: int) -> None:
        """ESA under ``p`` on ``n`` channels."""
        e = lambda k: self.w[p + k]  # noqa: E731
        self.need(p + "conv1", "in", n)
        self.need(p + "conv_f", "in", e("conv1")[1])
        self.need(p + "conv2", "in", e("conv1")[1])
        self.need(p + "conv_max", "in", e("conv2")[1])
        self.need(p + "conv3", "in", e("conv_max")[1])
        self.need(p + "conv3_", "in", e("conv3")[1])
        self.need(p + "conv_f", "out", e("conv3_")[1])
        self.need(p + "conv4", "in", e("conv3_")[1])
        self.need(p + "conv4", "out", n)

    def block(self, p: str, n_in: int) -> int:
        """RFDB/SRFDB under ``p`` reading ``n_in`` channels; returns its output width."""
        steps = block_steps(self.w, p)
        if steps < 1:
            raise KeyError(p + "c1_r")
        for i in range(1, steps + 1):
            self.need(f"{p}c{i}_d", "in", n_in)
            self.need(f"{p}c{i}_r", "in", n_in)
            self.need(f"{p}c{i}_r", "out", n_in)
        self.need(p + "c4", "in", n_in)
        cat_w = sum(self.w[p + c][1] for c in distilled_names(steps))
        if p + "cat_p" in self.w:
            self.need(p + "cat_p", "in", cat_w)
            cat_w = self.w[p + "cat_p"][1]
        self.need(p + "c5", "in", cat_w)
        n_out = self.w[p + "c5"][1]
        self.esa(p + "esa.", n_out)
        return n_out


def block_errors(widths: Mapping[str, tuple[int, int]], n_in: int | None = None) -> list[Error]:
    """Couplings broken inside one RFDB/SRFDB (local names ``c1_d`` ... ``esa.conv4``).

    ``n_in``: the width it is fed (default: what its ``c1_r`` reads). Also reports stray or missing convs.
    """
    ck = _Checker(widths)
    try:
        steps = block_steps(widths)
        expected = {f"c{i}_{t}" for i in range(1, steps + 1) for t in "dr"} | {"c4", "c5"}
        expected |= {f"esa.{c}" for c in ESA_CONVS} | ({"cat_p"} & set(widths))
        for k in sorted(set(widths) - expected):
            ck.errs.append((k, "unexpected", 0, 0))
        for k in sorted(expected - set(widths)):
            ck.errs.append((k, "missing", 0, 0))
        if not ck.errs:
            ck.block("", widths["c1_r"][0] if n_in is None else n_in)
    except KeyError as k:
        ck.errs.append((str(k).strip("'"), "missing", 0, 0))
    return ck.errs


def esa_errors(widths: Mapping[str, tuple[int, int]]) -> list[Error]:
    """Couplings broken inside one ESA (names ``conv1`` ... ``conv4``)."""
    ck = _Checker(widths)
    missing = [c for c in ESA_CONVS if c not in widths]
    if missing or set(widths) - set(ESA_CONVS):
        return [(k, "missing", 0, 0) for k in missing] + [(k, "unexpected", 0, 0)
                                                          for k in sorted(set(widths) - set(ESA_CONVS))]
    ck.esa("", widths["conv1"][0])
    return ck.errs


def width_errors(arch: Arch) -> list[Error]:
    """Channel couplings that ``arch``'s widths break: ``[(conv, 'in'|'out'|'missing', expected, actual)]``."""
    ck = _Checker(arch.w)
    w = ck.w
    if LAYOUTS[arch.layout].srfdb and not any(k.startswith("srfdb.") for k in w):
        ck.errs.append(("srfdb.c1_r", "missing", 0, 0))  # the layout has SRFDB branches
    try:
        n = arch.branches
        if arch.form == "merged":
            ck.need("fea", "in", 3 * n)
            f_w = w["fea"][1]
            if "srfdb.c5" in w:
                ck.need("split_left", "in", f_w)
                ck.need("split_right", "in", f_w)
                f_w = w["split_left"][1] + ck.block("srfdb.", w["split_right"][1])
            b, outs = f_w, []
            for d in range(arch.depth):
                b = ck.block(f"stages.{d}.", b)
                outs.append(b)
            cat_w = sum(outs)
            if "cat_p" in w:
                ck.need("cat_p", "in", cat_w)
                cat_w = w["cat_p"][1]
            ck.need("c", "in", cat_w)
            ck.need("split", "in", f_w)
            ck.need("split", "out", w["LR_conv"][1])
        else:
            ck.need("fea", "in", 3)
            nf = w["fea"][1]
            if arch.n_srfdb:
                out = ck.block("srfdb.", nf)
                if out != nf:
                    ck.errs.append(("srfdb.c5", "out", nf, out))
            b, outs = nf, []
            for d in range(arch.depth):
                b = ck.block(f"stages.{d}.", b)
                outs.append(b)
            ck.need("c", "in", n * sum(outs))
            ck.need("LR_conv", "out", nf)
        if arch.depth < 1:
            ck.errs.append(("stages.0.c1_r", "missing", 0, 0))
        ck.need("LR_conv", "in", w["c"][1])
        ck.need("upsampler", "in", w["LR_conv"][1])
        ck.need("upsampler", "out", 3 * arch.scale * arch.scale)
    except KeyError as k:
        ck.errs.append((str(k).strip("'"), "missing", 0, 0))
    return ck.errs


def describe(err: Error, where: str = "") -> str:
    """One-line text of a coupling error."""
    name, side, exp, act = err
    if side == "missing":
        return f"{where}architecture has no conv {name!r}"
    if side == "unexpected":
        return f"{where}unexpected conv {name!r}"
    return f"{where}inconsistent widths: {name} has {act} {side}put channels, its neighbours need {exp}"


def check_widths(arch: Arch) -> None:
    """Raise ValueError on the first broken channel coupling, naming the conv."""
    errs = width_errors(arch)
    if errs:
        raise ValueError(describe(errs[0]))
