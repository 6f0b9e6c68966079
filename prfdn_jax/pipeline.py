"""The PRFDN recipe end to end: RFDN -> branch net -> re-parametrization -> pruning, with a report.

Stages (outputs in the workdir; a stage whose model file exists is not run again, and the training
stages resume from their own workdirs, so an interrupted pipeline can simply be re-run):

1. ``rfdn``: train an RFDN (``config.rfdn``; ``steps=0`` takes ``init_weights`` as is)
   -> ``1_rfdn.safetensors``, training workdir ``rfdn/``.
2. ``branch``: ``reparam.branch_from_rfdn(rfdn, layout)``, trained with ``config.branch``
   -> ``2_branch.safetensors``, ``branch/``.
3. ``reparam``: ``reparam.reparam`` (wide, grouped convs) and ``reparam.wide_to_merged`` (dense), both
   exact, no training -> ``3_wide.safetensors``, ``3_merged.safetensors``.
4. ``prune``: ``prune.prune_model`` on the wide net, finetuning with ``config.finetune`` after every
   pruning step -> ``4_pruned.safetensors``, ``prune_history.json``, finetuning workdirs ``prune/``.

``report.md`` has one table row per network: parameters, GMAC at a 1920x1080 input
(``macs.summary``), PSNR-Y on Set5 / Set14 when present, and CPU latency; ``psnr_vs_gmac.png`` plots
PSNR against GMAC across stages.

The config is a :class:`prfdn_jax.config.PipelineConfig`; ``prfdn pipeline CONFIG --workdir W
[--data DIR ...] [--val DIR ...] [--stages ...]`` is the command line. The prune stage needs PyTorch
and Torch-Pruning (``pip install 'prfdn-jax[torch]'``); the others do not (unless a config starts
from a ``.pth``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from prfdn_jax import data as data_lib
from prfdn_jax import macs
from prfdn_jax import reparam as rp
from prfdn_jax.checkpoint import load_model_file, save_model
from prfdn_jax.config import STAGES, ConfigError, PipelineConfig, TrainConfig, load_config
from prfdn_jax.evaluate import device_forward, evaluate, load_eval_set
from prfdn_jax.extras import require_torch
from prfdn_jax.prune import prune_model
from prfdn_jax.train import finetune, init_model, run

__all__ = ["STAGES", "PipelineConfig", "eval_set", "measure", "run_pipeline", "write_report", "plot_psnr_vs_gmac"]


# ----------------------------------------------------------------------------- measurements
def eval_set(name_dir: tuple[str, str], scale: int, limit: int = 0, crop: int = 0):
    """``[(name, lr, hr)]`` of a benchmark set folder (``<set>/HR``, ``<set>/LR_bicubic/X<s>`` if present).

    With ``crop`` the HR is centre-cropped to ``crop x crop`` and its LR made by MATLAB bicubic.
    Returns None if the set is not there. A relative folder is under the shared data folder.
    """
    _, rel = name_dir
    root = Path(rel) if os.path.isabs(rel) else data_lib.shared_path(rel)
    if not root.is_dir():
        return None
    return load_eval_set(root, scale, limit=limit, crop=crop)


def measure(model, sets: dict, scale: int, latency_shape, runs: int) -> dict:
    """params, GMAC (1080p and the benchmark input), PSNR-Y per set, median CPU latency in ms."""
    s = macs.summary(model, 1080, 1920)
    bh, bw = macs.BENCH_INPUT.get(scale, (1080, 1920))
    out = {"params": s["params"], "gmac_1080p": s["gmac"], "gmac_bench": macs.summary(model, bh, bw)["gmac"]}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    f = device_forward(graphdef, rest, params)
    for name, items in sets.items():
        out[f"psnr_{name}"] = evaluate(f, items, scale, with_ssim=False)["psnr_y"] if items else None
    # latency: the same jitted forward, on the CPU, median of `runs` after two warm-up passes
    cpu = jax.devices("cpu")[0]
    f = device_forward(graphdef, rest, params, device=cpu)
    x = jax.device_put(np.zeros(latency_shape, np.float32), cpu)
    for _ in range(2):
        jax.block_until_ready(f(x))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(f(x))
        times.append((time.perf_counter() - t) * 1e3)
    out["latency_ms"] = float(np.median(times))
    return out


# ----------------------------------------------------------------------------- report
def write_report(workdir: Path, config: PipelineConfig, rows: list[dict], set_names: list[str], notes: list[str],
                 history: list[dict] | None) -> Path:
    lat = "x".join(str(v) for v in config.latency_shape)
    bh, bw = macs.BENCH_INPUT.get(config.scale, (1080, 1920))
    bench_col = config.scale != 2
    head = ["stage", "network", "params", "GMAC (1920x1080 in)"]
    if bench_col:
        head.append(f"GMAC ({bw}x{bh} in)")
    head += [f"PSNR-Y {n} (dB)" for n in set_names]
    head.append(f"CPU latency (ms, {lat} input, median of {config.latency_runs} after 2 warm-up)")
    lines = [f"# PRFDN pipeline report: x{config.scale}, layout {config.layout}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}. PSNR-Y: Y channel, {config.scale} pixels cropped "
             "from each border, MATLAB-bicubic LR"
             + (f" of {config.eval_crop}x{config.eval_crop} centre crops" if config.eval_crop else "")
             + (f", first {config.eval_limit} image(s) per set" if config.eval_limit else "") + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    for r in rows:
        cells = [r["stage"], f"`{r['file']}` ({r['form']}, {r['layout']})", f"{r['params']:,}",
                 f(r["gmac_1080p"], ".2f")]
        if bench_col:
            cells.append(f(r["gmac_bench"], ".2f"))
        cells += [f(r.get(f"psnr_{n}"), ".3f") for n in set_names]
        cells.append(f(r["latency_ms"], ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    if history:
        lines += ["", "## Pruning steps", "", "| step | ratio | params | GMAC (1920x1080 in) |", "|---|---|---|---|"]
        for h in history:
            lines.append(f"| {h.get('step')} | {h.get('ratio', 0):.3f} | {h.get('params', 0):,} | "
                         f"{h.get('gmac_1080p', 0):.2f} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "![PSNR against GMAC](psnr_vs_gmac.png)", ""]
    path = workdir / "report.md"
    path.write_text("\n".join(lines))
    return path


def plot_psnr_vs_gmac(rows: list[dict], set_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.92)
    plotted = False
    for n in set_names:
        pts = [(r["gmac_1080p"], r[f"psnr_{n}"], r["stage"]) for r in rows if r.get(f"psnr_{n}") is not None]
        if not pts:
            continue
        plotted = True
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=n)
        seen: dict = {}
        for x, y, s in pts:  # stack the labels of networks at the same point
            k = (round(x, 3), round(y, 3))
            ax.annotate(s, (x, y), textcoords="offset points", xytext=(5, 4 + 9 * seen.get(k, 0)), fontsize=8)
            seen[k] = seen.get(k, 0) + 1
    if not plotted:
        ax.text(0.5, 0.5, "no evaluation set found", ha="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.set(xlabel="GMAC at a 1920x1080 input", ylabel="PSNR-Y (dB)", title="PSNR against GMAC across stages")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.1)  # room for the stage labels at the edges
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- pipeline
def _stage_model(path: Path, make):
    if path.is_file():
        print(f"[pipeline] {path.name} exists: stage skipped", flush=True)
        return load_model_file(path), True
    model = make()
    save_model(path, model)
    return model, False


def _checked(config, workdir) -> PipelineConfig:
    """``config`` loaded and checked; the pruning extra checked before hours of training."""
    config = load_config(config)
    if not isinstance(config, PipelineConfig):
        raise ConfigError(f"the pipeline needs a PipelineConfig, got {type(config).__name__}")
    unknown = set(config.stages) - set(STAGES)
    if unknown:
        raise ConfigError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    if config.rfdn.layout != "rfdn" or config.rfdn.scale != config.scale or config.rfdn.n_blocks != 4:
        raise ConfigError("config.rfdn must be a 4-block RFDN (layout 'rfdn') at the pipeline's scale")
    if "prune" in config.stages and not (Path(workdir) / "4_pruned.safetensors").is_file():
        require_torch("the pipeline's prune stage", pruning=True)
    return config


def run_pipeline(config, data_dirs, workdir, val_dirs=None) -> Path:
    """Run the stages of ``config`` in ``workdir``; returns the path of ``report.md``."""
    config = _checked(config, workdir)
    data_dirs = [str(d) for d in ([data_dirs] if isinstance(data_dirs, (str, os.PathLike)) else (data_dirs or []))]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "pipeline_config.json").write_text(json.dumps(config.to_dict(), indent=1, default=str))

    def stage_cfg(c: TrainConfig) -> TrainConfig:
        c = c.replace(data_dirs=tuple(data_dirs) or c.data_dirs)
        return c.replace(val_dirs=tuple(val_dirs)) if val_dirs is not None else c

    models: list[tuple[str, str, object]] = []  # (stage, file name, model)
    notes: list[str] = []
    history = None
    want = set(config.stages)
    t0 = time.perf_counter()

    # 1. RFDN
    def make_rfdn():
        c = stage_cfg(config.rfdn)
        if c.steps == 0:
            return init_model(c)
        return run(c, workdir / "rfdn")[0]

    rfdn, _ = _stage_model(workdir / "1_rfdn.safetensors", make_rfdn)
    models.append(("1 rfdn", "1_rfdn.safetensors", rfdn))

    # 2. branch
    branch = wide = None
    if want & {"branch", "reparam", "prune"}:
        def make_branch():
            start = rp.branch_from_rfdn(rfdn, config.layout)
            c = stage_cfg(config.branch)
            return run(c, workdir / "branch", model=start)[0] if c.steps else start

        branch, _ = _stage_model(workdir / "2_branch.safetensors", make_branch)
        models.append(("2 branch", "2_branch.safetensors", branch))

    # 3. re-parametrization (exact)
    if want & {"reparam", "prune"}:
        shape = config.latency_shape
        wide, _ = _stage_model(workdir / "3_wide.safetensors", lambda: rp.reparam(branch))
        merged, _ = _stage_model(workdir / "3_merged.safetensors", lambda: rp.wide_to_merged(wide))
        models += [("3 reparam", "3_wide.safetensors", wide), ("3 merged", "3_merged.safetensors", merged)]
        notes.append(f"re-parametrization max |output difference| vs the branch net: "
                     f"wide {_max_diff(branch, wide, shape):.2e}, merged {_max_diff(branch, merged, shape):.2e} "
                     f"(on a random {'x'.join(map(str, shape))} input in [0, 255])")

    # 4. pruning with finetuning
    if "prune" in want:
        hist_path = workdir / "prune_history.json"

        def make_pruned():
            ft_root = workdir / "prune"
            shutil.rmtree(ft_root, ignore_errors=True)  # an unfinished earlier attempt
            fc = stage_cfg(config.finetune)
            cb = (lambda m, k: finetune(m, fc, None, fc.steps, workdir=ft_root / f"step{k}", verbose=True)) \
                if fc.steps else None
            pruned, hist = prune_model(wide, ratio=config.prune_ratio, steps=config.prune_steps,
                                       uniform=config.prune_uniform, importance=config.prune_importance,
                                       finetune=cb)
            hist_path.write_text(json.dumps(hist, indent=1, default=float))
            return pruned

        pruned, _ = _stage_model(workdir / "4_pruned.safetensors", make_pruned)
        models.append(("4 pruned", "4_pruned.safetensors", pruned))
        if hist_path.is_file():
            history = json.loads(hist_path.read_text())

    report = _report(workdir, config, models, notes, history)
    print(f"[pipeline] {report} ({time.perf_counter() - t0:.1f}s)", flush=True)
    return report


def _report(workdir: Path, config: PipelineConfig, models, notes: list[str], history) -> Path:
    """Measure every stage's network (params, GMAC, latency, PSNR per eval set) -> report.json, the
    PSNR-vs-GMAC plot and report.md; returns report.md's path."""
    sets, set_names = {}, []
    for nd in config.eval_sets:
        items = eval_set(nd, config.scale, config.eval_limit, config.eval_crop)
        if items is None:
            notes.append(f"{nd[0]} not found ({nd[1]}): no PSNR column for it")
            continue
        sets[nd[0]] = items
        set_names.append(nd[0])
    rows = []
    for stage, fname, model in models:
        m = measure(model, sets, config.scale, config.latency_shape, config.latency_runs)
        rows.append({"stage": stage, "file": fname, "form": model.arch.form, "layout": model.arch.layout, **m})
    (workdir / "report.json").write_text(json.dumps(rows, indent=1))
    plot_psnr_vs_gmac(rows, set_names, workdir / "psnr_vs_gmac.png")
    report = write_report(workdir, config, rows, set_names, notes, history)
    return report


def _max_diff(a, b, shape) -> float:
    """Max |a(x) - b(x)| on a random input in [0, 255] (jitted forwards shared with the measurements)."""
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)

    def out(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)
        return np.asarray(device_forward(graphdef, rest, params)(x))

    return float(np.max(np.abs(out(a) - out(b))))
