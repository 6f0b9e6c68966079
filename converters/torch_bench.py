"""PyTorch side of ``prfdn bench``: the reference network, same weights, in every mode a user would pick.

Modes: ``eager`` (NCHW), ``channels_last``, ``cuda_graph`` (CUDA only: one captured graph replayed),
``compile`` (``torch.compile``) and ``compile_channels_last``. Protocol as NTIRE 2023 RTSR
(``shared/docs/benchmark-protocol.md``): random input, ``cudnn.benchmark``, fp16/bf16 by casting model
and input (no autocast), warm-up passes, then device-synchronised timed passes; median and mean are
reported, compile/capture time apart.

Training (:func:`bench_torch_train`, behind ``prfdn bench train``): one step of the reference network in
train mode (Adam lr 5e-4, L1 / 255, uint8 LR/HR batches converted on the device, as ``prfdn train``
does), modes :data:`TRAIN_MODES`: ``eager``, ``channels_last``, ``bf16_autocast`` (``torch.autocast``
bfloat16, the loss in float32) and ``compile`` (``torch.compile`` of the network; forward and backward
compiled, Adam eager). Every mode starts from the same weights and a fresh Adam.
"""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch
from torch import nn

MODES = ("eager", "channels_last", "cuda_graph", "compile", "compile_channels_last")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def _timed(fn, dev: str, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    for _ in range(runs):
        if dev == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return times


def bench_torch(module: nn.Module, x: np.ndarray, dtype: str = "float32", modes=None, warmup: int = 2,
                runs: int = 5) -> list[dict]:
    """``[{'mode', 'median_ms', 'mean_ms', 'compile_s'}]`` of a PyTorch reference network ``module``
    (``prfdn_jax.prune.to_torch``) on ``x`` (NHWC float, [0, 255]); modes that do not apply (CUDA graphs on
    a CPU) are skipped."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    dt = _DTYPES[dtype]
    base = module.to(dev).to(dt).eval()
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dev).to(dt)
    rows = []
    for mode in modes or MODES:
        if mode == "cuda_graph" and dev != "cuda":
            continue
        cl = mode in ("channels_last", "compile_channels_last")
        net = base.to(memory_format=torch.channels_last) if cl else base.to(memory_format=torch.contiguous_format)
        inp = xt.contiguous(memory_format=torch.channels_last) if cl else xt.contiguous()
        compile_s = 0.0
        with torch.no_grad():
            if mode.startswith("compile"):
                t = time.perf_counter()
                fn = torch.compile(net)
                fn(inp)
                _sync(dev)
                compile_s = time.perf_counter() - t
                call = lambda fn=fn, inp=inp: fn(inp)  # noqa: E731
            elif mode == "cuda_graph":
                static = inp.clone()
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3):
                        net(static)
                torch.cuda.current_stream().wait_stream(s)
                t = time.perf_counter()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    net(static)
                compile_s = time.perf_counter() - t
                call = graph.replay
            else:
                call = lambda net=net, inp=inp: net(inp)  # noqa: E731
            times = _timed(call, dev, warmup, runs)
        rows.append({"mode": mode, "median_ms": statistics.median(times), "mean_ms": statistics.fmean(times),
                     "compile_s": compile_s, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"})
    return rows


TRAIN_MODES = ("eager", "channels_last", "bf16_autocast", "compile")


def bench_torch_train(module: nn.Module, lr: np.ndarray, hr: np.ndarray, modes=None, warmup: int = 2, runs: int = 5,
                      lr_rate: float = 5e-4) -> list[dict]:
    """``[{'mode', 'dtype', 'median_ms', 'mean_ms', 'compile_s'}]``: one training step of the PyTorch reference
    network ``module`` on ``lr``/``hr`` (uint8 NHWC); a mode that fails gives ``{'mode', 'dtype', 'error'}``."""

    bad = [m for m in modes or () if m not in TRAIN_MODES]
    if bad:
        raise ValueError(f"unknown training mode {', '.join(bad)}; modes: {', '.join(TRAIN_MODES)}")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    base = module
    x8 = torch.from_numpy(np.ascontiguousarray(lr.transpose(0, 3, 1, 2))).to(dev)
    y8 = torch.from_numpy(np.ascontiguousarray(hr.transpose(0, 3, 1, 2))).to(dev)
    rows = []
    for mode in modes or TRAIN_MODES:
        cl = mode == "channels_last"
        fmt = torch.channels_last if cl else torch.contiguous_format
        net = copy.deepcopy(base).to(dev).train().to(memory_format=fmt)
        opt = torch.optim.Adam(net.parameters(), lr=lr_rate, betas=(0.9, 0.999))
        x, y = x8.contiguous(memory_format=fmt), y8.contiguous(memory_format=fmt)
        fwd = net
        dtype = "bfloat16" if mode == "bf16_autocast" else "float32"

        def step(fwd=fwd, opt=opt, x=x, y=y, mode=mode):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=mode == "bf16_autocast"):
                out = fwd(x.float())
            loss = (out.float() - y.float()).abs().mean() / 255.0
            loss.backward()
            opt.step()
            return loss

        compile_s = 0.0
        try:
            if mode == "compile":
                fwd = torch.compile(net)
                t = time.perf_counter()
                step(fwd=fwd)
                _sync(dev)
                compile_s = time.perf_counter() - t
                call = lambda fwd=fwd: step(fwd=fwd)  # noqa: E731
            else:
                call = step
            times = _timed(call, dev, warmup, runs)
        except Exception as e:  # noqa: BLE001 - a mode this machine cannot run (no compiler, ...) is reported
            rows.append({"mode": mode, "dtype": dtype, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                         if str(e) else type(e).__name__})
            continue
        rows.append({"mode": mode, "dtype": dtype, "median_ms": statistics.median(times),
                     "mean_ms": statistics.fmean(times), "compile_s": compile_s,
                     "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"})
    return rows
