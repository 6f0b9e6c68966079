"""Make ``prfdn-x4``: a released x4 network -> reparam (exact) -> pruned to a MAC budget -> finetune with EMA.

``--source`` picks the released x4 network: ``b4s`` (the default; 570,548 params, 277.7 GMAC at 540x960),
``b2`` (434,848 params, 215.1 GMAC: two branches of two RFDBs, no SRFDB; the shipped prfdn-x4's) or ``rfdn``
(RFDN itself, 433,448 params, 214.4 GMAC: four RFDBs in sequence, one branch); ``run/prune.json`` records it.

One resumable run, in two folders:

* ``--run`` (committed, small: ``experiments/runs/prfdn_x4``): ``pruned.safetensors`` (the network after the
  budgeted pruning), ``pareto.csv`` (one row per pruning step), ``finetune/`` (the training workdir: the
  latest checkpoint only, ``metrics.csv``, ``runs.jsonl``, ``arch.json``, ``config.json``).
* ``--work`` (not committed; remade from ``shared/`` when missing): the prepared training pairs and the
  workdirs of the short finetunes between pruning steps.

Running the same command again resumes where it stopped (the finetune is bit-exact across interruptions:
Ctrl-C, or SIGTERM, then the same command). ``--steps`` is the finetune's total step count; a later
session, or a GPU, raises it and goes on. ``--cpu-smoke`` is a tiny profile for tests.

    python experiments/prfdn_x4.py                                 # CPU: prepare, prune, then finetune
    python experiments/prfdn_x4.py --steps 200000 --set batch=64   # go on (e.g. on a GPU)
    python experiments/prfdn_x4.py --ship     # the finetune's EMA -> prfdn_jax/weights/prfdn_x4.safetensors

A second stage is a finetune in another run folder that starts from given weights (``--start``: no pruning)
with other settings; prfdn-x4's is a cosine finetune on 256-pixel patches (ESA pools over the patch: on
128-pixel patches, 32 LR pixels, its 7x7 max-pool sees a 3x3 map; on whole images far more):

    python experiments/prfdn_x4.py --run experiments/runs/prfdn_x4_p256 --work runs/prfdn_x4_work \
        --start STAGE1_EMA.safetensors --steps 10000 \
        --set patch=256 batch=8 lr=1e-4 schedule=cosine val_every=1000 seed=101

``--prune K=V`` changes the pruning (a new run folder prunes again): e.g. ``prune_ft_steps=250
prune_patch=256 prune_lr=1e-4`` finetunes longer between steps, on 256-pixel patches; ``run/prune.json``
records the settings used.

``--teacher rfdn-x4`` trains a stage on the prepared pairs followed by the same LR labelled by the teacher
(``experiments/distill_data.py``, made once in ``--work``): output distillation mixed with the ground truth.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from pathlib import Path

SCALE = 4
# the released x4 networks --source prunes: two branch models and RFDN itself (one branch)
SOURCES = {"b4s": "rfdnb4s_branch_x4.pth", "b2": "rfdnb2_branch_x4.pth", "rfdn": "rfdn_aim_x4.pth"}
TARGET_GMAC, SIZE = 58.5, (540, 960)  # prfdn-x2's 4K-output budget: 58.55 GMAC at 1080x1920 in, x2
TRAIN_SETS = ("T91", "BSD200", "General100", "BSDS500_test200")
PARETO_FIELDS = ("step", "ratio", "params", "gmac", "gmac_1080p", "psnr")

PROFILES = {
    # pruning: uniform (stays a grouped wide net), Taylor importance, 0.05 of the channels per step
    "cpu": dict(prune_ratio=0.9, prune_steps=18, prune_ft_steps=100, calib=16, prune_batch=8, prune_patch=128,
                prune_lr=2e-4, prune_keep="", steps=100_000, batch=16, patch=128, lr=2e-4, ema=0.999, log_every=100,
                ckpt_every=250, val_every=2000),
    "cpu_smoke": dict(prune_ratio=0.9, prune_steps=18, prune_ft_steps=2, calib=2, prune_batch=2, prune_patch=64,
                      prune_lr=2e-4, prune_keep="", steps=6, batch=2, patch=64, lr=2e-4, ema=0.9, log_every=2,
                      ckpt_every=3, val_every=3),
}


def shared_root(path: str | None) -> Path:
    return Path(path or os.environ.get("PRFDN_SHARED") or Path(__file__).resolve().parents[2] / "shared")


@dataclasses.dataclass(frozen=True)
class PruneSettings:
    """The pruning half of a profile: ``--prune K=V`` overrides it like ``--set`` does the finetune's."""
    prune_ratio: float
    prune_steps: int
    prune_ft_steps: int
    prune_patch: int
    prune_batch: int
    prune_lr: float
    calib: int
    prune_keep: str = ""  # conv families left whole, comma-separated (config.PRUNE_KEEP: esa, distilled)


PRUNE_KEYS = tuple(f.name for f in dataclasses.fields(PruneSettings))
PRUNE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PruneSettings) if f.default is not dataclasses.MISSING}


def prune_overrides(pairs: list[str], profile: dict) -> dict:
    """``["prune_ft_steps=300", ...]`` -> the profile's pruning keys with these values (checked, typed)."""
    from prfdn_jax.config import ConfigError, override

    try:
        settings = override(PruneSettings(**{k: profile[k] for k in PRUNE_KEYS}), pairs)
    except ConfigError as e:
        raise SystemExit(str(e).replace("--set", "--prune")) from None
    from prfdn_jax.config import PRUNE_KEEP

    bad = [k for k in settings.prune_keep.split(",") if k and k not in PRUNE_KEEP]
    if bad:
        raise SystemExit(f"bad --prune prune_keep: {bad[0]!r}; choose from {', '.join(PRUNE_KEEP)}")
    return dataclasses.asdict(settings)


def prune_record(run: Path) -> dict | None:
    """``run/prune.json``, the pruning settings and source a run was pruned with (None before it prunes)."""
    record = run / "prune.json"
    return json.loads(record.read_text()) if record.is_file() else None


def check_prune_settings(run: Path, p: dict, given: list[str], second_stage: bool) -> None:
    """``--prune`` must take effect: refused for a second stage, and for a run already pruned otherwise
    (the same command, with the same settings, still resumes)."""
    if not given:
        return
    if second_stage:
        raise SystemExit("--prune has no effect on a second stage (--start): it does not prune")
    if (run / "pruned.safetensors").is_file():
        before = prune_record(run)
        was = {k: before.get(k, PRUNE_DEFAULTS.get(k)) for k in PRUNE_KEYS} if before else None
        if was != {k: p[k] for k in PRUNE_KEYS}:
            raise SystemExit(f"--prune: {run} was already pruned with other settings (prune.json: {before}); "
                             f"use a new --run")


def prepared_data(shared: Path, work: Path, sets=TRAIN_SETS, smoke: bool = False, rescale=(1.0,)) -> Path:
    """The training pairs at x4 as a prepared dataset in ``work`` (made once), with the images also at each
    ``rescale`` factor when more than ``(1.0,)`` is given (``prfdn prepare --rescale``)."""
    from prfdn_jax.prepare import prepare

    sizes = "" if tuple(rescale) == (1.0,) else "_r" + "-".join(f"{f:g}" for f in rescale)
    out = work / f"prepared_x{SCALE}{sizes}{'_smoke' if smoke else ''}"
    if not (out / "prepared.json").is_file():
        dirs = [str(shared / "data" / "train" / s) for s in sets if (shared / "data" / "train" / s).is_dir()]
        if smoke:
            dirs = dirs[:1]
        info = prepare(dirs, out, scale=SCALE, rescale=rescale)
        print(f"[prfdn_x4] prepared {info.get('count', '?')} pairs from {len(dirs)} folders", flush=True)
    return out


def distilled_data(prepared: Path, teacher: str) -> Path:
    """``prepared``'s pairs, then the same LR with ``teacher``'s outputs (made once, beside it)."""
    import distill_data

    out = prepared.with_name(prepared.name + "_kd")
    side = out / "prepared.json"
    if not side.is_file():
        distill_data.main([str(prepared), str(out), "--teacher", teacher])
    made_by = json.loads(side.read_text()).get("teacher", {}).get("model")
    if made_by != teacher:
        raise SystemExit(f"{out} holds {made_by}'s outputs, not {teacher}'s: move it away to remake it")
    return out


def prune_stage(shared: Path, run: Path, work: Path, prepared: Path, p: dict, source: str = "b4s") -> None:
    """Budgeted uniform Taylor pruning of the released ``source`` network (re-parametrized), with a short
    finetune after every step -> run/pruned.safetensors."""
    import numpy as np

    from prfdn_jax import train
    from prfdn_jax.checkpoint import load_any, save_model
    from prfdn_jax.config import TrainConfig
    from prfdn_jax.data import make_iterator
    from prfdn_jax.evaluate import evaluate, forward, load_eval_set
    from prfdn_jax.prune import prune_model
    from prfdn_jax.reparam import reparam

    import shutil

    for d in work.glob("prune_ft*"):  # a restarted pruning starts over: these belong to an earlier attempt
        shutil.rmtree(d)
    wide = reparam(load_any(str(shared / "weights" / SOURCES[source])))
    b = next(make_iterator([str(prepared)], scale=SCALE, patch=p["prune_patch"], batch=p["calib"], seed=12345))
    calib = (b["lr"].astype(np.float32), b["hr"].astype(np.float32))
    val_items = load_eval_set(str(shared / "data" / "Set5"), SCALE, crop=96 if p["smoke"] else 0)
    base = TrainConfig(layout=wide.arch.layout, scale=SCALE, data_dirs=(str(prepared),), patch=p["prune_patch"],
                       batch=p["prune_batch"], lr=p["prune_lr"], log_every=max(p["prune_ft_steps"], 1),
                       ckpt_every=10**9, keep=1)

    def between(model, k):
        return train.finetune(model, base.replace(seed=k), None, p["prune_ft_steps"], work / f"prune_ft{k}")

    def val(model):
        return evaluate(forward(model), val_items, SCALE, with_ssim=False)["psnr_y"]

    pruned, history = prune_model(wide, ratio=p["prune_ratio"], steps=p["prune_steps"], uniform=True,
                                  importance="taylor", calib=calib, finetune=between, val=val,
                                  target_gmac=TARGET_GMAC, size=SIZE,
                                  keep=tuple(k for k in p["prune_keep"].split(",") if k))
    (run / "prune.json").write_text(json.dumps({**{k: p[k] for k in PRUNE_KEYS}, "source": source}, indent=1) + "\n")
    with open(run / "pareto.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PARETO_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
    save_model(run / "pruned.safetensors", pruned, source="experiments/prfdn_x4.py (budgeted pruning)",
               target_gmac=str(TARGET_GMAC), size=f"{SIZE[0]}x{SIZE[1]}")
    h = history[-1]
    print(f"[prfdn_x4] pruned in {h['step']} steps: {h['params']:,} params, {h['gmac']:.2f} GMAC at "
          f"{SIZE[0]}x{SIZE[1]}, Set5 {h['psnr']:.2f} dB", flush=True)


def finetune_stage(shared: Path, run: Path, prepared: Path, p: dict, overrides: list[str],
                   start: Path | None = None) -> dict:
    from prfdn_jax import train
    from prfdn_jax.checkpoint import load_model_file
    from prfdn_jax.config import TrainConfig, override

    vals = [str(shared / "data" / s) for s in ("Set5", "Set14")]
    model = load_model_file(start or run / "pruned.safetensors")
    cfg = TrainConfig(layout=model.arch.layout, scale=SCALE, data_dirs=(str(prepared),), patch=p["patch"],
                      batch=p["batch"], lr=p["lr"], schedule="constant", ema_decay=p["ema"], log_every=p["log_every"],
                      ckpt_every=p["ckpt_every"], keep=1, val_dirs=tuple(vals), val_every=p["val_every"],
                      val_limit=2 if p["smoke"] else 0, steps=p["steps"], seed=100)
    if overrides:
        cfg = override(cfg, overrides)
    with train.stop_on_signals():  # SIGINT / SIGTERM: checkpoint the last step, then TrainingStopped
        return train.train(cfg, run / "finetune", model=model)


EVAL_SETS = ("Set5", "Set14", "Urban100")
SHIPPED = Path(__file__).resolve().parents[1] / "prfdn_jax" / "weights" / "prfdn_x4.safetensors"


def copy_start(src: Path, dst: Path, esa: int | None = None, distilled: int | None = None) -> None:
    """``src`` -> ``dst`` (a second stage's ``start.safetensors``), first widened (ESA inner width ``esa``,
    distilled width ``distilled``) if either is given: the same function, more capacity (:mod:`prfdn_jax.widen`)."""
    import shutil

    from prfdn_jax.checkpoint import WeightsError, model_from_flat, read_model_file, save_model
    from prfdn_jax.widen import WidenError, widen

    try:
        arch, flat, meta = read_model_file(src)  # checked even when only copied
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not (esa or distilled):
            shutil.copyfile(src, dst)
            return
        arch, flat = widen(arch, flat, esa=esa, distilled=distilled)
    except (WeightsError, WidenError) as e:
        raise SystemExit(f"--start {src}: {e}") from None
    keep = {k: v for k, v in meta.items() if k not in ("format", "arch")}
    save_model(dst, model_from_flat(arch, flat), **keep, widened=f"esa={esa} distilled={distilled} from {src.name}")


def run_source(run: Path, given: str | None = None) -> str:
    """The released network ``run`` was pruned from: its ``prune.json`` (b4s before it was recorded), else
    ``given`` (a second stage, or a run not yet pruned), else b4s. A ``given`` that contradicts the record
    is refused."""
    record = prune_record(run)
    recorded = record.get("source", "b4s") if record is not None else None
    if given and recorded and given != recorded:
        raise SystemExit(f"--source {given}: {run} was pruned from {recorded}; use a new --run")
    return recorded or given or "b4s"


def pareto_png(run: Path) -> Path:
    """``run/pareto.png`` from ``run/pareto.csv`` (its ``psnr`` column is Set5's)."""
    from prfdn_jax import pareto

    name = run_source(run).upper()
    keep = (prune_record(run) or {}).get("prune_keep")
    how = f"Taylor, {keep.replace(',', ' and ')} kept whole" if keep else "Taylor"
    rows = [{("psnr_Set5" if k == "psnr" else k): v for k, v in r.items()} for r in pareto.read_csv(run / "pareto.csv")]
    return pareto.plot(rows, run / "pareto.png", SIZE, title=f"prfdn-x4: budgeted pruning of the released {name} x4 "
                                                            f"({how}, 100 finetune steps a step)")


def average_weights(models: list):
    """A network whose every parameter is the mean of ``models``' (same architecture): a uniform "model soup"
    of finetunes that share a start."""
    import jax
    import numpy as np
    from flax import nnx

    graphdef, _ = nnx.split(models[0])
    states = [nnx.split(m)[1] for m in models]
    mean = jax.tree.map(lambda *a: np.mean(np.stack([np.asarray(x, np.float64) for x in a]), 0)
                        .astype(np.asarray(a[0]).dtype), *states)
    return nnx.merge(graphdef, mean)


def latest_step(run: Path) -> int:
    """The step of the newest checkpoint in ``run``'s finetune workdir."""
    return max(int(d.name) for d in (run / "finetune" / "checkpoints").iterdir() if d.name.isdigit())


def soup_ingredient(path: str) -> tuple:
    """``(model, identity)`` of a ``--soup`` item: a weight file (identity: its SHA-256) or a run folder (its
    finetune's EMA at the latest checkpoint; identity: ``EMA at step N``)."""
    import hashlib

    from prfdn_jax.checkpoint import WeightsError, load_model_file
    from prfdn_jax.workdir import load_workdir_model

    p = Path(path)
    if (p / "finetune").is_dir():
        return load_workdir_model(p / "finetune"), f"EMA at step {latest_step(p)}"
    if not p.is_file():
        raise SystemExit(f"--soup {path}: neither a weight file nor a run folder with finetune/")
    try:
        return load_model_file(p), hashlib.sha256(p.read_bytes()).hexdigest()
    except WeightsError as e:
        raise SystemExit(f"--soup {e}") from None


def ship(shared: Path, run: Path, dst: Path = SHIPPED, soup: tuple[str, ...] = ()) -> dict:
    """The finetune's latest EMA (``soup``: averaged with these weight files or run folders' EMAs), evaluated
    like ``prfdn eval`` (Y-PSNR, MATLAB-bicubic LR, ``scale`` border) on Set5/Set14/Urban100, written as a
    built-in model file; ``run/results.json`` gets the numbers. The source release is named by the network's
    layout (a second stage has no ``prune.json``; the layout cannot disagree with the weights)."""
    import hashlib

    from prfdn_jax.checkpoint import save_model
    from prfdn_jax.evaluate import evaluate, load_eval_set
    from prfdn_jax.macs import summary
    from prfdn_jax.workdir import load_workdir_model

    model = load_workdir_model(run / "finetune")
    if model.arch.layout not in SOURCES:
        raise SystemExit(f"{run} holds a {model.arch.layout} network, not one pruned from {', '.join(SOURCES)}")
    weights = SOURCES[model.arch.layout]
    ingredients = {str(f): soup_ingredient(f) for f in soup}
    if any(m.arch != model.arch for m, _ in ingredients.values()):
        raise SystemExit("--soup: every ingredient must have the run's architecture")
    if soup:
        model = average_weights([model, *(m for m, _ in ingredients.values())])
    rows = list(csv.DictReader(open(run / "finetune" / "metrics.csv")))
    step = latest_step(run)
    psnr = {}
    for name in EVAL_SETS:
        if (shared / "data" / name).is_dir():
            items = load_eval_set(str(shared / "data" / name), SCALE)
            psnr[name] = round(evaluate(model, items, SCALE, with_ssim=False)["psnr_y"], 3)
            print(f"[prfdn_x4] {name}: {psnr[name]:.3f} dB ({len(items)} images)", flush=True)
    sha = hashlib.sha256((shared / "weights" / weights).read_bytes()).hexdigest()
    s = summary(model, *SIZE)
    wall, prev = 0.0, 0.0  # elapsed_s restarts with every resumed run: sum the runs
    for r in (r for r in rows if int(r["step"]) <= step):
        t = float(r["elapsed_s"] or 0)
        wall, prev = (wall + prev if t < prev else wall), t
    res = {"step": step, "params": s["params"], "gmac_540x960": round(s["gmac"], 3), "psnr_y": psnr,
           "finetune_wall_s": round(wall + prev, 1), "source_sha256": sha}
    stage = {}
    if (run / "start.safetensors").is_file():  # a second stage: name the weights it started from
        digest = hashlib.sha256((run / "start.safetensors").read_bytes()).hexdigest()
        res["start_sha256"] = stage["start_sha256"] = digest
    if soup:
        res["soup"] = {f: ident for f, (_, ident) in ingredients.items()}  # a file's SHA-256 or a run's EMA step
        stage["soup"] = json.dumps(res["soup"])
    save_model(dst, model, source=f"made by prfdn-jax (experiments/prfdn_x4.py) from {weights}",
               source_sha256=sha, finetune_step=str(step), psnr_y=json.dumps(psnr), **stage)
    (run / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    if (run / "pareto.csv").is_file():  # the pruning run's (a second stage has none)
        pareto_png(run)
    print(f"[prfdn_x4] wrote {dst}: step {step}, {s['params']:,} params, {s['gmac']:.2f} GMAC at 540x960", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=str(Path(__file__).resolve().parent / "runs" / "prfdn_x4"))
    ap.add_argument("--work", default=None, help="prepared data and pruning workdirs (default RUN_work under runs/)")
    ap.add_argument("--shared", default=None)
    ap.add_argument("--steps", type=int, default=None, help="total finetune steps")
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--ship", action="store_true", help="write the finetune's EMA as the built-in prfdn-x4 and stop")
    ap.add_argument("--soup", nargs="*", default=[], metavar="W",
                    help="with --ship: average the EMA with these weight files (e.g. RUN/start.safetensors) or "
                         "run folders (their finetune's EMA)")
    ap.add_argument("--set", nargs="*", default=[], metavar="K=V", help="finetune config overrides")
    ap.add_argument("--teacher", default=None, help="distil from this built-in model (mixed with the ground truth)")
    ap.add_argument("--rescale", type=float, nargs="+", default=[1.0], metavar="F",
                    help="train on the images at these sizes too (prfdn prepare --rescale; made once in --work)")
    ap.add_argument("--prune", nargs="*", default=[], metavar="K=V",
                    help="pruning overrides: " + ", ".join(PRUNE_KEYS) + " (e.g. prune_ft_steps=300 prune_patch=256)")
    ap.add_argument("--source", choices=tuple(SOURCES), default=None,
                    help="the released x4 network to prune (default b4s; a run keeps the one it was pruned from; "
                         "--ship reads it from the network's layout)")
    ap.add_argument("--start", default=None, help="a second stage: finetune from these weights (copied into the "
                                                  "run as start.safetensors; no pruning)")
    ap.add_argument("--widen-esa", type=int, default=None, metavar="F",
                    help="with --start: widen every ESA to F inner channels first (exact: prfdn_jax.widen)")
    ap.add_argument("--widen-distilled", type=int, default=None, metavar="D",
                    help="with --start: widen every distilled conv (c1_d .. c4) to D channels first (exact)")
    a = ap.parse_args(argv)
    p = dict(PROFILES["cpu_smoke" if a.cpu_smoke else "cpu"], smoke=a.cpu_smoke)
    if a.steps is not None:
        p["steps"] = a.steps
    p.update(prune_overrides(a.prune, p))
    from prfdn_jax.backends import configure_xla_flags

    configure_xla_flags()
    shared, run = shared_root(a.shared), Path(a.run)
    if a.ship:
        ship(shared, run, soup=tuple(a.soup))
        return 0
    check_prune_settings(run, p, a.prune, bool(a.start) or (run / "start.safetensors").is_file())
    source = run_source(run, a.source)
    work = Path(a.work) if a.work else Path(__file__).resolve().parents[1] / "runs" / f"{run.name}_work"
    start = run / "start.safetensors"
    if (a.widen_esa or a.widen_distilled) and not a.start:
        raise SystemExit("--widen-esa/--widen-distilled widen the weights of a second stage: give --start")
    if a.start and not start.is_file():  # checked (and widened) before anything is made
        copy_start(Path(a.start), start, a.widen_esa, a.widen_distilled)
    run.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    prepared = prepared_data(shared, work, smoke=a.cpu_smoke, rescale=tuple(a.rescale))
    if a.teacher:
        prepared = distilled_data(prepared, a.teacher)
    if not start.is_file():
        start = None
        if not (run / "pruned.safetensors").is_file():
            prune_stage(shared, run, work, prepared, p, source)
    from prfdn_jax.train import TrainingStopped

    try:
        s = finetune_stage(shared, run, prepared, p, a.set, start)
    except TrainingStopped as e:
        print(f"[prfdn_x4] {e}; the same command resumes", flush=True)
        return 128 + e.signum
    print(f"[prfdn_x4] finetune at step {s['step']} of {s['steps']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
