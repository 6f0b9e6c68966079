"""A real run in a fixed time budget: the released B4S x4 (570,548 parameters) re-parametrized, pruned
uniformly to ~60-100k parameters (Taylor importance on a batch of training patches: magnitude
importance wrecks this network, see experiments/README.md) with finetuning between the steps, then
finetuned for the rest of the
budget with an EMA of the parameters and bf16 compute (``compute_dtype='auto'``: bf16 on a GPU), on
prepared training pairs. Writes the weights, metrics.csv and a Set5/Set14/Urban100 PSNR-Y table.

    # GPU, once (~8 min of training + data preparation and evaluation; see experiments/README.md):
    python experiments/prune_finetune_x4.py --out runs/prune_x4 --budget-s 420
    # this CPU, a few minutes (tiny batches and steps, evaluation on centre crops):
    python experiments/prune_finetune_x4.py --cpu-smoke --out experiments/results/cpu_smoke
    # the data a machine without ../shared needs (weights, T91, Set5, Set14, part of Urban100), < 45 MiB:
    python experiments/prune_finetune_x4.py --make-bundle runs/bundle_x4

Outputs in ``--out`` (at most 5 files, none in subfolders): ``pruned_x4.safetensors`` (the EMA),
``metrics.csv`` (the final finetune's), ``results.json``, ``results.md``, and ``log.txt`` when the caller
tees it there. Workdirs and the prepared data go to ``--work`` (default: a folder beside ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WEIGHTS = ("weights", "rfdnb4s_branch_x4.pth")
TRAIN_SETS = ("T91", "BSD200", "General100", "BSDS500_test200")
EVAL_SETS = ("Set5", "Set14", "Urban100")
SCALE = 4

# Two profiles; every value can be overridden on the command line.
PROFILES = {
    "gpu": dict(budget_s=420.0, batch=64, patch=192, ratio=0.62, prune_steps=3, prune_ft_steps=250, lr=2e-4,
                importance="taylor", calib=16,
                ema=0.999, workers=8, log_every=50, eval_crop=0, eval_limit=0, dtype="auto",
                train_sets=",".join(TRAIN_SETS)),
    "cpu_smoke": dict(budget_s=150.0, batch=4, patch=64, ratio=0.62, prune_steps=3, prune_ft_steps=6, lr=2e-4,
                      importance="taylor", calib=4,
                      ema=0.9, workers=0, log_every=5, eval_crop=96, eval_limit=3, dtype="auto",
                      train_sets="T91"),
}


def shared_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return Path(os.environ.get("PRFDN_SHARED", ROOT.parent / "shared"))


# ----------------------------------------------------------------------------- the data bundle
def make_bundle(shared: Path, dest: Path, mib: float = 44.0) -> dict:
    """Copy what a run needs into ``dest`` (laid out as shared/): the weights, T91, Set5 and Set14 (HR and
    LR X4), then Urban100 HR images in order while the total stays under ``mib`` MiB."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []

    def copy(rel: Path) -> int:
        src, dst = shared / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied.append(str(rel))
        return src.stat().st_size

    total = copy(Path(*WEIGHTS))
    for rel in [Path("data", "train", "T91")] + [Path("data", s, sub) for s in ("Set5", "Set14")
                                                   for sub in ("HR", f"LR_bicubic/X{SCALE}")]:
        for f in sorted((shared / rel).iterdir()):
            if f.is_file():
                total += copy(rel / f.name)
    urban = 0
    for f in sorted((shared / "data" / "Urban100" / "HR").iterdir()):
        if total + f.stat().st_size > mib * 2**20:
            break
        total += copy(Path("data", "Urban100", "HR", f.name))
        urban += 1
    info = {"files": len(copied), "bytes": total, "mib": round(total / 2**20, 1), "urban100_images": urban}
    (dest / "BUNDLE.json").write_text(json.dumps(info, indent=1))
    return info


# ----------------------------------------------------------------------------- the run
def _eval_sets(shared: Path, limit: int, crop: int) -> dict:
    from prfdn_jax.evaluate import load_eval_set

    sets = {}
    for name in EVAL_SETS:
        d = shared / "data" / name
        if d.is_dir():
            sets[name] = load_eval_set(str(d), SCALE, limit=limit, crop=crop)
    return sets


def _psnr(model, sets: dict, names=None) -> dict:
    from prfdn_jax.evaluate import evaluate, forward

    f = forward(model)
    return {n: round(evaluate(f, items, SCALE, with_ssim=False)["psnr_y"], 3)
            for n, items in sets.items() if names is None or n in names}


def _steady_rate(workdir: Path) -> tuple[float, float]:
    """(steps/s after the first logged interval, seconds until the first log: compile + first steps)."""
    import csv

    rows = list(csv.DictReader(open(workdir / "metrics.csv")))
    first = float(rows[0]["elapsed_s"])
    rates = [float(r["steps_per_s"]) for r in rows[1:] if r.get("steps_per_s")]
    return (statistics.median(rates) if rates else float(rows[0]["steps_per_s"])), first


def _count(model) -> int:
    import jax
    import numpy as np
    from flax import nnx

    return sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _prune_phase(a, res: dict, rows: list, work: Path, prepared: Path, wide, sets: dict, log):
    """Uniform pruning with a short finetune after every step; ``(pruned, base TrainConfig, eval seconds)``."""
    import numpy as np

    from prfdn_jax import train
    from prfdn_jax.config import TrainConfig
    from prfdn_jax.data import make_iterator
    from prfdn_jax.evaluate import evaluate, forward, load_eval_set
    from prfdn_jax.prune import prune_model

    base = TrainConfig(layout="b4s", scale=SCALE, data_dirs=(str(prepared),), patch=a.patch, batch=a.batch,
                       workers=a.workers, lr=a.lr, schedule="constant", log_every=a.log_every, ckpt_every=10**9,
                       keep=1, compute_dtype=a.dtype)
    t_train = time.perf_counter()
    ft_runs = []

    def between(model, k):
        m, s = train.run(base.replace(steps=a.prune_ft_steps, seed=k), work / f"prune_ft{k}", model=model,
                         verbose=a.verbose)
        ft_runs.append({"step": k, "params": s["params"], "steps": s["step"], "wall_s": s["wall_s"],
                        "loss": s["loss"], "images_per_s": s["images_per_s"], "data_wait": s["data_wait"]})
        log(f"prune step {k}: {s['params']:,} params, {s['step']} finetune steps in {s['wall_s']:.0f}s, "
            f"loss {s['loss']:.4g}")
        return m

    for k in range(1, a.prune_steps + 1):  # a rerun starts over: prune workdirs of an earlier run are stale
        shutil.rmtree(work / f"prune_ft{k}", ignore_errors=True)
    calib = None
    if a.importance == "taylor":  # a batch of training patches (float, [0, 255]) for the Taylor importance
        it = make_iterator([str(prepared)], scale=SCALE, patch=a.patch, batch=a.calib, seed=12345)
        b = next(it)
        calib = (b["lr"].astype(np.float32), b["hr"].astype(np.float32))
    val_items = load_eval_set(str(shared / "data" / "Set5"), SCALE, crop=96)  # one shape: one compile per net

    def val(model):
        return evaluate(forward(model), val_items, SCALE, with_ssim=False)["psnr_y"]

    pruned, history = prune_model(wide, ratio=a.ratio, steps=a.prune_steps, uniform=True, finetune=between,
                                  importance=a.importance, calib=calib, val=val)
    res["phases"]["prune_s"] = round(time.perf_counter() - t_train, 1)
    res["prune_history"], res["prune_finetunes"] = history, ft_runs
    t = time.perf_counter()
    rows.append({"model": f"pruned ({a.importance}, ratio {a.ratio}, {a.prune_steps} steps, {a.prune_ft_steps} "
                          "finetune steps after each)", "params": _count(pruned), **_psnr(pruned, sets, ("Set5",))})
    eval_s = time.perf_counter() - t
    log(f"pruned: {rows[-1]}")

    return pruned, base, eval_s


def run(a) -> dict:
    import jax

    from prfdn_jax import train
    from prfdn_jax.checkpoint import load_any, save_model
    from prfdn_jax.workdir import load_workdir_model
    from prfdn_jax.prepare import prepare
    from prfdn_jax.reparam import reparam
    from prfdn_jax.train_step import resolve_dtype, resolve_impl

    t_start = time.perf_counter()
    shared, out, work = shared_root(a.shared), Path(a.out), Path(a.work or f"{a.out}_work")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"profile": a.profile, "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
                 "impl": resolve_impl(None), "compute_dtype": resolve_dtype(a.dtype), "settings": {
                     k: getattr(a, k) for k in PROFILES["gpu"]}, "phases": {}}
    log = (lambda *m: print("[prune_x4]", *m, flush=True))  # noqa: E731

    # data: prepared once (every training folder present), then read as prepared pairs
    names = [s for s in a.train_sets.split(",") if s]
    dirs = [str(shared / "data" / "train" / s) for s in names if (shared / "data" / "train" / s).is_dir()]
    prepared = work / f"prepared_x{SCALE}"
    t = time.perf_counter()
    if not (prepared / "prepared.json").is_file():
        info = prepare(dirs, prepared, scale=SCALE, workers=min(os.cpu_count() or 1, 16) if a.workers else 0)
        log(f"prepared {info.get('count', '?')} pairs from {len(dirs)} folders in {time.perf_counter() - t:.0f}s")
    res["phases"]["prepare_s"] = round(time.perf_counter() - t, 1)
    res["train_sets"] = [Path(d).name for d in dirs]

    sets = _eval_sets(shared, a.eval_limit, a.eval_crop)
    res["eval"] = {n: {"images": len(v), "crop": a.eval_crop} for n, v in sets.items()}
    t = time.perf_counter()
    branch = load_any(str(shared.joinpath(*WEIGHTS)))
    wide = reparam(branch)
    rows = [{"model": "released B4S x4 (branch)", "params": _count(branch), **_psnr(wide, sets)}]
    res["phases"]["eval_released_s"] = round(time.perf_counter() - t, 1)
    log(f"released: {rows[-1]}")

    t_train = time.perf_counter()
    pruned, base, eval_s = _prune_phase(a, res, rows, work, prepared, wide, sets, log)
    # the rest of the budget: one finetune with EMA, cosine lr, steps from the measured rate
    rate, first = _steady_rate(work / f"prune_ft{a.prune_steps}")
    left = a.budget_s - (time.perf_counter() - t_train) + eval_s  # the pruned net's evaluation is not training
    steps = max(int((left - first) * rate), 10)
    res["final_plan"] = {"left_s": round(left, 1), "rate_steps_per_s": round(rate, 3), "compile_s_est": first,
                         "steps": steps}
    log(f"final finetune: {steps} steps ({left:.0f}s left at {rate:.2f} steps/s)")
    fw = work / "finetune"
    shutil.rmtree(fw, ignore_errors=True)
    final, s = train.run(base.replace(steps=steps, schedule="cosine", ema_decay=a.ema, seed=100,
                                      log_every=a.log_every), fw, model=pruned, verbose=a.verbose)
    res["phases"]["finetune_s"] = s["wall_s"]
    res["phases"]["train_total_s"] = round(time.perf_counter() - t_train - eval_s, 1)
    res["finetune"] = {k: s[k] for k in ("step", "wall_s", "steps_per_s", "images_per_s", "data_wait", "loss",
                                          "impl", "compute_dtype", "ema")}
    t = time.perf_counter()
    rows.append({"model": f"pruned + finetuned, EMA {a.ema} (saved)", "params": _count(final), **_psnr(final, sets)})
    raw = load_workdir_model(fw, ema=False)
    rows.append({"model": "pruned + finetuned, raw parameters", "params": _count(raw), **_psnr(raw, sets, ("Set5",))})
    res["phases"]["eval_final_s"] = round(time.perf_counter() - t, 1)
    log(f"final: {rows[-2]}; raw: {rows[-1]}")

    save_model(out / f"pruned_x{SCALE}.safetensors", final, source="experiments/prune_finetune_x4.py",
               ema_decay=str(a.ema))
    shutil.copy2(fw / "metrics.csv", out / "metrics.csv")
    res["rows"] = rows
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "results.md").write_text(report(res))
    return res


def report(res: dict) -> str:
    crop = next(iter(res["eval"].values()), {}).get("crop", 0)
    ev = ", ".join(f"{n} {v['images']} images" for n, v in res["eval"].items())
    ev += f" (HR centre-cropped to {crop} px)" if crop else " (whole images)"
    lines = [f"# B4S x4: reparam -> uniform prune -> finetune with EMA ({res['profile']})", "",
             f"Device: {res['device']} ({res['backend']}); apply path {res['impl']}, compute dtype "
             f"{res['compute_dtype']}; training data: {', '.join(res['train_sets'])} (prepared pairs).",
             f"PSNR-Y (dB, {SCALE} border pixels cropped) on {ev}; '-': not evaluated.", "",
             "| model | params | " + " | ".join(EVAL_SETS) + " |", "|---|---|" + "---|" * len(EVAL_SETS)]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['params']:,} | " + " | ".join(
            f"{r[n]:.2f}" if n in r else "-" for n in EVAL_SETS) + " |")
    f, p = res["finetune"], res["phases"]
    lines += ["", f"Final finetune: {f['step']} steps in {f['wall_s']:.0f} s ({f['steps_per_s']} steps/s incl. "
              f"compile, {f['images_per_s']} images/s, {f['data_wait']:.0%} of the time waiting for data); "
              f"final loss {f['loss']:.4g}.",
              f"Time: prepare {p['prepare_s']} s, prune + finetunes {p['prune_s']} s, final finetune "
              f"{p['finetune_s']} s (training {p['train_total_s']} s of a {res['settings']['budget_s']:.0f} s "
              f"budget), whole run {res['wall_s']} s.", "",
              f"Pruning ({res['settings']['importance']} importance): after each step, Set5 PSNR-Y on 96 px centre "
              "crops (after that step's finetune).", "",
              "| prune step | params | GMAC (1920x1080 input) | Set5 crops dB | finetune steps | s | images/s "
              "| data wait |",
              "|---|---|---|---|---|---|---|---|"]
    ft = {r["step"]: r for r in res["prune_finetunes"]}
    for h in res["prune_history"]:
        r = ft.get(h["step"])
        extra = (f"{r['steps']} | {r['wall_s']:.0f} | {r['images_per_s']} | {r['data_wait']:.0%}" if r
                 else "- | - | - | -")
        lines.append(f"| {h['step']} | {h['params']:,} | {h['gmac_1080p']:.1f} | {h.get('psnr', float('nan')):.2f} | "
                     f"{extra} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="the CPU profile: tiny batches, a few minutes")
    p.add_argument("--make-bundle", metavar="DIR", help="only copy the data a run needs to DIR (laid out as shared/)")
    p.add_argument("--bundle-mib", type=float, default=44.0, help="size limit of the bundle (default 44 MiB)")
    p.add_argument("--shared", help="the shared/ folder or a bundle (default $PRFDN_SHARED or ../shared)")
    p.add_argument("--out", help="results folder (small files only)")
    p.add_argument("--work", help="workdirs and prepared data (default OUT_work)")
    p.add_argument("--quiet", dest="verbose", action="store_false", help="no progress bars")
    for k, v in PROFILES["gpu"].items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=None, help=f"(gpu profile: {v})")
    a = p.parse_args(argv)
    if a.make_bundle:
        print(json.dumps(make_bundle(shared_root(a.shared), Path(a.make_bundle), a.bundle_mib)))
        return 0
    if not a.out:
        p.error("--out is required")
    a.profile = "cpu_smoke" if a.cpu_smoke else "gpu"
    for k, v in PROFILES[a.profile].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    from prfdn_jax.backends import configure_xla_flags

    configure_xla_flags()
    res = run(a)
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
