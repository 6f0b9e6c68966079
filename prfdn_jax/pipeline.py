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

CLI: ``python -m prfdn_jax.pipeline CONFIG --data DIR [DIR ...] --workdir W [--val DIR ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prfdn_jax import data as data_lib
from prfdn_jax import imaging
from prfdn_jax.checkpoint import load_model_file, save_model
from prfdn_jax.train import ConfigError, OneLineParser, TrainConfig, load_config, run_cli

STAGES = ("rfdn", "branch", "reparam", "prune")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The four-stage recipe. Each training stage has its own :class:`TrainConfig`."""

    scale: int
    layout: str                       # branch layout: 'b4s' (x2 in PRFDN), 'b2s' (x3), 'b2'
    rfdn: TrainConfig                 # stage 1 (layout 'rfdn', 4 blocks)
    branch: TrainConfig               # stage 2: the branch net made from stage 1
    finetune: TrainConfig             # stage 4: finetuning after each pruning step (steps per step)
    prune_ratio: float = 0.5          # fraction of channels removed per dependency group
    prune_steps: int = 4
    prune_uniform: bool = False       # True: keep the branches uniform (stays 'wide')
    prune_importance: str = "magnitude"
    stages: tuple[str, ...] = STAGES
    # report
    eval_sets: tuple[tuple[str, str], ...] = (("Set5", "data/Set5"), ("Set14", "data/Set14"))  # under shared/
    eval_limit: int = 0               # first N images per set (0: all)
    eval_crop: int = 0                # centre-crop HR to this size (smoke runs only; 0: whole images)
    latency_shape: tuple[int, int, int, int] = (1, 128, 128, 3)
    latency_runs: int = 5

    train_stages = ("rfdn", "branch", "finetune")

    def replace(self, **kw) -> "PipelineConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        kw = dict(d)
        for k in cls.train_stages:
            if isinstance(kw.get(k), dict):
                kw[k] = TrainConfig(**{a: tuple(v) if isinstance(v, list) else v for a, v in kw[k].items()})
        return cls(**kw)


# ----------------------------------------------------------------------------- measurements
def eval_set(name_dir: tuple[str, str], scale: int, limit: int = 0, crop: int = 0):
    """``[(name, lr, hr)]`` of a benchmark set folder (``<set>/HR``, ``<set>/LR_bicubic/X<s>`` if present).

    With ``crop`` the HR is centre-cropped to ``crop x crop`` and its LR made by MATLAB bicubic.
    Returns None if the set is not there.
    """
    from prfdn_jax.train import load_val_set

    _, rel = name_dir
    root = Path(rel) if os.path.isabs(rel) else data_lib.shared_path(rel)
    hr_dir = root / "HR" if (root / "HR").is_dir() else root
    if not hr_dir.is_dir():
        return None
    lr_dir = root / "LR_bicubic" / f"X{scale}"
    entry = (str(hr_dir), str(lr_dir)) if lr_dir.is_dir() and not crop else str(hr_dir)
    items = load_val_set([entry], scale, limit)
    if crop:
        c = crop - crop % scale
        out = []
        for name, _, hr in items:
            h, w = hr.shape[:2]
            y, x = max((h - c) // 2, 0), max((w - c) // 2, 0)
            hr_c = imaging.modcrop(hr[y:y + c, x:x + c], scale)
            out.append((name, imaging.downscale(hr_c, scale, "matlab"), hr_c))
        items = out
    return items


def measure(model, sets: dict, scale: int, latency_shape, runs: int) -> dict:
    """params, GMAC (1080p and the benchmark input), PSNR-Y per set, median CPU latency in ms."""
    import jax
    from flax import nnx

    from prfdn_jax import macs
    from prfdn_jax.train import device_forward, make_evaluator

    s = macs.summary(model, 1080, 1920)
    bh, bw = macs.BENCH_INPUT.get(scale, (1080, 1920))
    out = {"params": s["params"], "gmac_1080p": s["gmac"], "gmac_bench": macs.summary(model, bh, bw)["gmac"]}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    evaluate = make_evaluator(graphdef, rest, None)
    for name, items in sets.items():
        out[f"psnr_{name}"] = evaluate(params, items, scale) if items else None
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
    bh, bw = __import__("prfdn_jax.macs", fromlist=["BENCH_INPUT"]).BENCH_INPUT.get(config.scale, (1080, 1920))
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


def run_pipeline(config, data_dirs, workdir, val_dirs=None) -> Path:
    """Run the stages of ``config`` in ``workdir``; returns the path of ``report.md``."""
    from prfdn_jax import reparam as rp
    from prfdn_jax.train import finetune, init_model, run

    config = load_config(config)
    if not isinstance(config, PipelineConfig):
        raise ConfigError(f"the pipeline needs a PipelineConfig, got {type(config).__name__}")
    unknown = set(config.stages) - set(STAGES)
    if unknown:
        raise ConfigError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    if config.rfdn.layout != "rfdn" or config.rfdn.scale != config.scale or config.rfdn.n_blocks != 4:
        raise ConfigError("config.rfdn must be a 4-block RFDN (layout 'rfdn') at the pipeline's scale")
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
            from prfdn_jax.prune import prune_model

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

    # measurements, report, plot
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
    print(f"[pipeline] {report} ({time.perf_counter() - t0:.1f}s)", flush=True)
    return report


def _max_diff(a, b, shape) -> float:
    """Max |a(x) - b(x)| on a random input in [0, 255] (jitted forwards shared with the measurements)."""
    from flax import nnx

    from prfdn_jax.train import device_forward

    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)

    def out(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)
        return np.asarray(device_forward(graphdef, rest, params)(x))

    return float(np.max(np.abs(out(a) - out(b))))


# ----------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m prfdn_jax.pipeline",
                      description="RFDN -> branch -> reparam -> prune, with report.md.")
    p.add_argument("config", help="pipeline config file or module (path.py[:function])")
    p.add_argument("--data", nargs="+", metavar="DIR", help="HR training image folders (default: the config's)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--val", nargs="+", metavar="DIR", help="HR validation folders for the training stages")
    p.add_argument("--stages", nargs="+", choices=STAGES, help="stages to run (the stages they build on are run too, or reused from the workdir)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)

    def body():
        config = load_config(args.config)
        if not isinstance(config, PipelineConfig):
            raise ConfigError(f"{args.config}: not a pipeline config (use prfdn_jax.train for a TrainConfig)")
        if args.stages:
            config = config.replace(stages=tuple(args.stages))
        run_pipeline(config, args.data, args.workdir, val_dirs=args.val)

    return run_cli(body)


if __name__ == "__main__":
    from prfdn_jax import pipeline as _pipeline

    sys.exit(_pipeline.main())
