"""Exact rewrites of a :class:`~prfdn_jax.deploy.graph.Program`. Each is a pure function
``Program -> Program`` computing the same function (up to float rounding), with its own equivalence
test in ``tests/test_deploy.py``. None folds a 3x3 conv into another 3x3 conv (not exact at borders).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from prfdn_jax.deploy.graph import (Act, Add, Concat, Conv, MaxPool, Mul, Namer, PixelShuffle, Program, Resize, Slice,
                                    channels, prune_dead, rename)


def _replace_ops(prog: Program, ops) -> Program:
    return prune_dead(Program(list(ops), prog.scale, prog.inp, prog.out))


def _plain(op) -> bool:
    """A stride-1, ungrouped conv with 'same' padding (centre tap = the pixel itself)."""
    return isinstance(op, Conv) and op.stride == 1 and op.groups == 1 and op.k % 2 == 1 and op.pad == op.k // 2


# ----------------------------------------------------------------------------- input copies
def fold_input_copies(prog: Program) -> Program:
    """``conv(concat[x] * N)`` -> ``conv(x)`` with the N input slices of the kernel summed."""
    prod = prog.producer()
    out = []
    for op in prog.ops:
        cat = prod.get(op.src) if isinstance(op, Conv) else None
        if isinstance(cat, Concat) and op.groups == 1 and len(cat.srcs) > 1 and len(set(cat.srcs)) == 1:
            n = len(cat.srcs)
            kh, kw, ci, co = op.kernel.shape
            k = op.kernel.reshape(kh, kw, n, ci // n, co).sum(axis=2)
            op = dataclasses.replace(op, src=cat.srcs[0], kernel=k)
        out.append(op)
    return _replace_ops(prog, out)


# ----------------------------------------------------------------------------- ESA conv4 at low resolution
def esa_conv4_first(prog: Program) -> Program:
    """``conv4(resize(c3) + cf)`` -> ``resize(conv4'(c3)) + conv4(cf)`` with conv4' = conv4 without bias.

    Exact because bilinear weights sum to 1: a 1x1 conv (linear per pixel) commutes with the resize,
    and the bias passes through it unchanged. conv4 then runs at the pooled resolution.
    """
    prod, uses = prog.producer(), prog.uses()
    names = Namer(prod)
    out = []
    for op in prog.ops:
        s = prod.get(op.src) if isinstance(op, Conv) else None
        if (isinstance(op, Conv) and op.k == 1 and op.groups == 1 and isinstance(s, Add) and uses[s.out] == 1):
            up, other = (prod.get(s.a), s.b) if isinstance(prod.get(s.a), Resize) else (prod.get(s.b), s.a)
            if isinstance(up, Resize) and uses[up.out] == 1:
                low = Conv(names(op.out + ".low"), up.src, op.kernel, np.zeros_like(op.bias), precise=op.precise)
                hi = Resize(names(op.out + ".up"), low.out, up.like)
                rest = dataclasses.replace(op, out=names(op.out + ".rest"), src=other)
                out += [low, hi, rest, Add(op.out, hi.out, rest.out)]
                continue
        out.append(op)
    return _replace_ops(prog, out)


# ----------------------------------------------------------------------------- 1x1 after a conv
def _source(prod, v):
    """(conv, start, stop) if value ``v`` is a conv's output or a channel slice of one, else None."""
    op = prod.get(v)
    if isinstance(op, Slice) and isinstance(prod.get(op.src), Conv):
        return prod[op.src], op.start, op.stop
    if isinstance(op, Conv):
        return op, 0, op.cout
    return None


def fold_pointwise(prog: Program, max_taps: int = 27, cost: str = "always") -> Program:
    """A 1x1 conv B that reads (a slice of) conv A's output becomes extra outputs of A.

    ``B(A(x)[s:e]) = x * (K_A[..., s:e] @ W_B) + (b_A[s:e] @ W_B + b_B)``. Done when A is 1x1, when A
    reads at most ``max_taps`` values per output (k*k*cin; the 3-channel input conv), or when nothing
    but B reads A (A's own channels then vanish). A's old consumers read a slice of the widened A.
    ``cost="macs"`` folds only where that does not add multiply-accumulates (CPU: compute-bound);
    ``"always"`` folds wherever allowed (GPU: fewer kernels and memory passes win).
    """
    prog = prog.copy()
    while True:
        prod, cons = prog.producer(), prog.consumers()
        names = Namer(prod)
        for b in prog.ops:
            if not (isinstance(b, Conv) and b.k == 1 and b.stride == 1 and b.groups == 1):
                continue
            src = _source(prod, b.src)
            if src is None:
                continue
            a, s, e = src
            if a.groups != 1 or a is b:
                continue
            readers = cons.get(a.out, [])
            only_b = readers == [b] or (len(readers) == 1 and isinstance(readers[0], Slice)
                                        and cons.get(readers[0].out, []) == [b])
            if not (a.k == 1 or a.k * a.k * a.cin <= max_taps or only_b):
                continue
            taps = a.k * a.k * a.cin
            if cost == "macs" and taps * b.cout > b.cin * b.cout + (taps * (e - s) if only_b else 0):
                continue
            w = b.kernel[0, 0]
            k_new = np.einsum("hwio,oc->hwic", a.kernel[..., s:e].astype(np.float64), w).astype(np.float32)
            b_new = (a.bias[s:e].astype(np.float64) @ w + b.bias).astype(np.float32)
            wide = dataclasses.replace(a, out=names(a.out + ".w"), kernel=np.concatenate([a.kernel, k_new], -1),
                                       bias=np.concatenate([a.bias, b_new]), precise=a.precise or b.precise)
            ops = []
            for op in prog.ops:
                if op is a:
                    ops += [wide, Slice(a.out, wide.out, 0, a.cout)]
                elif op is b:
                    ops.append(Slice(b.out, wide.out, a.cout, a.cout + b.cout))
                else:
                    ops.append(op)
            prog = simplify_slices(_replace_ops(prog, ops))
            break
        else:
            return prog


# ----------------------------------------------------------------------------- slices
def simplify_slices(prog: Program) -> Program:
    """Slices of slices become one slice; a slice of every channel becomes the value itself."""
    ch = channels(prog)
    prod = prog.producer()
    alias, out = {}, []
    for op in prog.ops:
        if isinstance(op, Slice):
            inner = prod.get(op.src)
            if isinstance(inner, Slice):
                op = Slice(op.out, inner.src, inner.start + op.start, inner.start + op.stop)
                prod[op.out] = op
            if op.start == 0 and op.stop == ch[op.src]:
                alias[op.out] = op.src
                continue
        out.append(op)
    return prune_dead(rename(Program(out, prog.scale, prog.inp, prog.out), alias))


def drop_dead_channels(prog: Program) -> Program:
    """Output channels of a conv that no slice reads are removed (slices renumbered)."""
    cons = prog.consumers()
    out, moved = [], {}
    for op in prog.ops:
        if isinstance(op, Conv) and op.out != prog.out:
            readers = cons.get(op.out, [])
            if readers and all(isinstance(r, Slice) for r in readers):
                keep = sorted({c for r in readers for c in range(r.start, r.stop)})
                if len(keep) < op.cout:
                    new = {c: i for i, c in enumerate(keep)}
                    for r in readers:
                        moved[id(r)] = (new[r.start], new[r.stop - 1] + 1)
                    op = dataclasses.replace(op, kernel=op.kernel[..., keep], bias=op.bias[keep])
        if isinstance(op, Slice) and id(op) in moved:
            op = dataclasses.replace(op, start=moved[id(op)][0], stop=moved[id(op)][1])
        out.append(op)
    return Program(out, prog.scale, prog.inp, prog.out)


# ----------------------------------------------------------------------------- siblings
def merge_siblings(prog: Program, mix_kernels: bool = True) -> Program:
    """Convs reading the same value become one conv with more outputs (each original: a slice).

    With ``mix_kernels`` a 1x1 joins a 3x3 as its centre tap (exact: the centre tap reads the pixel
    itself, never the padding); otherwise only convs of one kernel size are merged.
    """
    prod = prog.producer()
    names = Namer(prod)
    groups: dict[tuple, list[Conv]] = {}
    for op in prog.ops:
        if _plain(op) and not op.precise:
            groups.setdefault((op.src,) if mix_kernels else (op.src, op.k), []).append(op)
    first = {}
    for members in groups.values():
        if len(members) > 1:
            first[id(members[0])] = members
    skip = {id(m) for ms in first.values() for m in ms[1:]}
    out = []
    for op in prog.ops:
        if id(op) in skip:
            continue
        members = first.get(id(op))
        if not members:
            out.append(op)
            continue
        kk = max(m.k for m in members)
        kernels = []
        for m in members:
            p = (kk - m.k) // 2
            kernels.append(np.pad(m.kernel, ((p, p), (p, p), (0, 0), (0, 0))))
        fused = Conv(names(op.out + ".fan"), op.src, np.concatenate(kernels, -1),
                     np.concatenate([m.bias for m in members]), 1, kk // 2)
        out.append(fused)
        start = 0
        for m in members:
            out.append(Slice(m.out, fused.out, start, start + m.cout))
            start += m.cout
    # a sibling may have been defined after a value another sibling needs: keep definition order valid
    return _replace_ops(prog, _topo(out, prog.inp))


def _topo(ops, inp):
    defined, done, pending = {inp}, [], list(ops)
    while pending:
        rest = []
        for op in pending:
            if all(v in defined for v in op.inputs()):
                done.append(op)
                defined.add(op.out)
            else:
                rest.append(op)
        if len(rest) == len(pending):
            raise RuntimeError(f"program has a cycle or an undefined value near {rest[0]!r}")
        pending = rest
    return done


# ----------------------------------------------------------------------------- residual as an identity tap
def residual_identity(prog: Program) -> Program:
    """``conv(r)[s:e] + r`` -> the conv with ``+1`` on the centre tap of channels s..e (the add vanishes).

    Only when nothing else reads those conv channels before the add.
    """
    prog = prog.copy()
    ch = channels(prog)
    prod, cons = prog.producer(), prog.consumers()
    alias = {}
    for add in [op for op in prog.ops if isinstance(op, Add) and not op.precise]:
        for u, v in ((add.a, add.b), (add.b, add.a)):
            src = _source(prod, u)
            if src is None:
                continue
            conv, s, e = src
            if not _plain(conv) or conv.src != v or e - s != ch[v] or conv.precise:
                continue
            readers = cons.get(conv.out, [])
            if u == conv.out:
                ok = readers == [add]
            else:
                ok = cons.get(u, []) == [add] and all(
                    isinstance(r, Slice) and (r.out == u or r.stop <= s or r.start >= e) for r in readers)
            if not ok:
                continue
            c = conv.k // 2
            conv.kernel = conv.kernel.copy()
            conv.kernel[c, c, np.arange(e - s), np.arange(s, e)] += 1.0
            alias[add.out] = u
            break
    ops = [op for op in prog.ops if op.out not in alias]
    return prune_dead(rename(Program(ops, prog.scale, prog.inp, prog.out), alias))


# ----------------------------------------------------------------------------- block-diagonal -> grouped
def regroup(prog: Program, candidates=(8, 6, 4, 3, 2)) -> Program:
    """A conv whose kernel is exactly block-diagonal with G equal blocks becomes a G-group conv."""
    out = []
    for op in prog.ops:
        if isinstance(op, Conv) and op.groups == 1:
            kh, kw, ci, co = op.kernel.shape
            for g in candidates:
                if ci % g or co % g or ci == g:
                    continue
                blocks = op.kernel.reshape(kh, kw, g, ci // g, g, co // g)
                mask = np.eye(g, dtype=bool)[None, None, :, None, :, None]
                if not np.any(np.where(mask, 0.0, blocks)):
                    k = np.concatenate([blocks[:, :, i, :, i, :] for i in range(g)], axis=-1)
                    op = dataclasses.replace(op, kernel=k, groups=g)
                    break
        out.append(op)
    return Program(out, prog.scale, prog.inp, prog.out)


# ----------------------------------------------------------------------------- channel alignment
def pad_channels(prog: Program, multiple: int = 8, max_growth: float | None = None) -> Program:
    """Every ungrouped conv's outputs zero-padded to a multiple of ``multiple`` (GPU convs of 24 channels
    run ~2.5x faster than of 23; with ``max_growth``, only where that multiplies the conv's outputs by at
    most that much), and every conv reading a padded value gets zero kernel rows for the
    padding, so the pad channels never reach a real one. Elementwise ops, pooling and resizing carry the
    padding along; an add/mul of differently padded values, a concat, PixelShuffle and the output read
    only the real channels (a slice). Exact.
    """
    real = channels(prog)
    phys = {prog.inp: 3}
    names = Namer(prog.producer())
    out = []

    def compact(v: str) -> str:
        if phys[v] == real[v]:
            return v
        name = names(v + ".real")
        out.append(Slice(name, v, 0, real[v]))
        phys[name] = real[name] = real[v]
        return name

    for op in prog.ops:
        op = dataclasses.replace(op)
        if isinstance(op, Conv):
            extra_in = phys[op.src] - real[op.src]
            if op.groups != 1:
                op.src = compact(op.src)
            elif extra_in:
                op.kernel = np.pad(op.kernel, ((0, 0), (0, 0), (0, extra_in), (0, 0)))
            pad_out = (-op.cout) % multiple if op.groups == 1 else 0
            if pad_out and max_growth is not None and op.cout + pad_out > max_growth * op.cout:
                pad_out = 0
            if pad_out:
                op.kernel = np.pad(op.kernel, ((0, 0), (0, 0), (0, 0), (0, pad_out)))
                op.bias = np.pad(op.bias, (0, pad_out))
            phys[op.out] = op.cout
        elif isinstance(op, (Act, MaxPool)):
            phys[op.out] = phys[op.src]
        elif isinstance(op, Resize):
            phys[op.out] = phys[op.src]
        elif isinstance(op, (Add, Mul)):
            if phys[op.a] != phys[op.b]:
                op.a, op.b = compact(op.a), compact(op.b)
            phys[op.out] = phys[op.a]
        elif isinstance(op, Concat):
            op.srcs = tuple(compact(v) for v in op.srcs)
            phys[op.out] = sum(phys[v] for v in op.srcs)
        elif isinstance(op, PixelShuffle):
            op.src = compact(op.src)
            phys[op.out] = real[op.out]
        else:  # Slice: indices of real channels are unchanged (padding is appended)
            phys[op.out] = real[op.out]
        out.append(op)
    result = Program(out, prog.scale, prog.inp, prog.out)
    if phys[prog.out] != real[prog.out]:
        result.ops.append(Slice(names(prog.out + ".real"), prog.out, 0, real[prog.out]))
        result.out = result.ops[-1].out
    return result


# ----------------------------------------------------------------------------- pipelines
def standard(prog: Program, *, merge: bool = True, mix_kernels: bool = False, fold_cost: str = "always",
             pad: int = 0, pad_growth: float | None = None) -> Program:
    """Every rewrite, in an order where each one exposes the next."""
    prog = regroup(prog)
    prog = fold_input_copies(prog)
    prog = esa_conv4_first(prog)
    prog = fold_pointwise(prog, cost=fold_cost)
    prog = drop_dead_channels(prog)
    if merge:
        prog = merge_siblings(prog, mix_kernels=mix_kernels)
    prog = residual_identity(prog)
    prog = simplify_slices(prog)
    prog = drop_dead_channels(prog)
    return pad_channels(prog, pad, pad_growth) if pad > 1 else prog
