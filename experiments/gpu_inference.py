"""Every GPU measurement the deploy-compiler issue asks for, in one run (~5 min on an H100).

Built-in weights only (they ship in the package), so the device needs nothing but the checkout:

    # GPU, once (results in --out: results.json, results.md; tee the log there too):
    python experiments/gpu_inference.py --out "$OUT" 2>&1 | tee "$OUT/log.txt"
    # this CPU, seconds (tiny sizes, few runs, PyTorch eager only): checks the script itself
    python experiments/gpu_inference.py --cpu-smoke --out /tmp/gpu_inference_smoke

What it measures (NTIRE protocol, ``prfdn_jax.bench.bench_inference``; same weights on both sides):

1. prfdn-x2, 1x1080x1920 fp16: the deployed JAX program, the network as built, and every PyTorch mode;
2. prfdn-x3, 1x720x1280 fp16, the same;
3. prfdn-x2, batch 8, fp16: JAX and torch.compile + channels_last, ms per frame;
4. prfdn-x2 1080p in bf16 and fp32 (JAX);
5. the backend's rewrite set, one switch at a time (GPU: channel padding 8 vs none, 1x1 as centre taps
   or not, 1x1 folding "always" vs "macs") at 1080p fp16, JAX only;
6. ``--xla_gpu_use_runtime_fusion=true`` (a subprocess: XLA reads flags at start), JAX only;
7. the compiled GPU program of the deployed prfdn-x2: kernels per call, convolutions, transposes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROFILES = {
    "gpu": dict(x2=(1080, 1920), x3=(720, 1280), batch=8, warmup=None, runs=None, modes=None),
    "cpu_smoke": dict(x2=(48, 64), x3=(48, 64), batch=2, warmup=1, runs=2, modes=("eager",)),
}


def versions() -> dict:
    import flax
    import jax

    out = {"python": sys.version.split()[0], "jax": jax.__version__, "flax": flax.__version__,
           "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
    except ImportError:
        out["torch"] = None
    return out


def program_stats(model, shape, dtype: str) -> dict:
    """Kernels, convolutions and transposes per call of the deployed program for ``shape``."""
    from prfdn_jax.bench import count_kernels
    from prfdn_jax.deploy import deploy

    text = deploy(model, dtype=dtype).lower_text(shape)
    entry = text[text.index("ENTRY"):]
    return {"kernels": count_kernels(text), "convolutions": entry.count("convolution(") + entry.count("custom-call("),
            "transposes": entry.count("transpose(")}


def rewrite_variants(model, size, prof) -> list[dict]:
    """The deployed prfdn-x2 with each rewrite of this backend's set switched, one at a time (JAX only)."""
    import dataclasses

    from prfdn_jax import backends as B
    from prfdn_jax.bench import bench_inference

    kind = B.backend_name()
    base = B.CHOICES[kind]
    rw = base.rewrites
    rows = []
    other = {"pad": 0 if rw.pad else 8, "mix_kernels": not rw.mix_kernels,
             "fold_cost": "macs" if rw.fold_cost == "always" else "always"}
    for name, change in [(f"{kind} set", {})] + [(f"{k} {v}", {k: v}) for k, v in other.items()]:
        B.CHOICES[kind] = dataclasses.replace(base, rewrites=dataclasses.replace(rw, **change))
        try:
            r = bench_inference(model, size, 1, "float16", "jax", prof["warmup"], prof["runs"])
        finally:
            B.CHOICES[kind] = base
        rows.append({"variant": name, "ms": r["jax_ms"], "kernels": r["jax"]["kernels"]})
        print(f"rewrites {name}: {r['jax_ms']:.3f} ms, {r['jax']['kernels']} kernels", flush=True)
    return rows


def runtime_fusion(size, prof) -> dict:
    """``prfdn bench`` in a subprocess with ``--xla_gpu_use_runtime_fusion=true`` (JAX, fp16)."""
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_use_runtime_fusion=true").strip()
    cmd = [sys.executable, "-m", "prfdn_jax.cli", "bench", "--model", "prfdn-x2", "--size", f"{size[0]}x{size[1]}",
           "--dtype", "float16", "--backend", "jax", "--json"]
    if prof["runs"]:
        cmd += ["--runs", str(prof["runs"]), "--warmup", str(prof["warmup"])]
    p = subprocess.run(cmd, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def markdown(res: dict) -> str:
    lines = [f"# GPU inference ({res['versions']['device']})", "",
             "```", json.dumps(res["versions"], indent=1), "```", ""]
    for key in ("x2", "x3", "batch"):
        r = res.get(key)
        if not r:
            continue
        lines += [f"## {key}: {r['batch']}x{r['size']} {r['dtype']}", "",
                  "| implementation | median ms | mean ms | compile s | vs best PyTorch |", "|---|---|---|---|---|"]
        rows = [("JAX deployed", r["jax"])]
        if "jax_network" in r:
            rows.append(("JAX network, not deployed", r["jax_network"]))
        rows += [(f"PyTorch {t['mode']}", t) for t in r.get("torch", [])]
        for name, t in rows:
            vs = f"{t['median_ms'] / r['torch_ms']:.2f}" if r.get("torch_ms") else "-"
            lines.append(f"| {name} | {t['median_ms']:.3f} | {t['mean_ms']:.3f} | {t['compile_s']:.1f} | {vs} |")
        if r["batch"] > 1:
            lines.append(f"\nper frame: JAX {r['jax_ms'] / r['batch']:.3f} ms")
        lines.append("")
    lines += ["## dtypes (JAX, prfdn-x2)", ""] + [f"- {k}: {v:.3f} ms" for k, v in res["dtypes"].items()] + [""]
    lines += ["## rewrites, one switch at a time (JAX fp16, prfdn-x2)", "", "| variant | ms | kernels |", "|---|---|---|"]
    lines += [f"| {v['variant']} | {v['ms']:.3f} | {v['kernels']} |" for v in res["rewrites"]] + [""]
    lines += ["## --xla_gpu_use_runtime_fusion=true", "", "```", json.dumps(res["runtime_fusion"]), "```", ""]
    lines += ["## compiled program (deployed prfdn-x2, fp16)", "", "```", json.dumps(res["program"]), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for results.json and results.md")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes and runs: check the script on a CPU")
    args = ap.parse_args(argv)

    from prfdn_jax.backends import configure_xla_flags

    configure_xla_flags()
    from prfdn_jax import registry
    from prfdn_jax.bench import bench_inference

    prof = PROFILES["cpu_smoke" if args.cpu_smoke else "gpu"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = {"versions": versions(), "profile": "cpu_smoke" if args.cpu_smoke else "gpu"}
    print(json.dumps(res["versions"]), flush=True)
    x2, x3 = registry.load("prfdn-x2"), registry.load("prfdn-x3")
    w, r, m = prof["warmup"], prof["runs"], prof["modes"]

    res["program"] = program_stats(x2, (1, *prof["x2"], 3), "float16")
    print("program", res["program"], flush=True)
    res["x2"] = bench_inference(x2, prof["x2"], 1, "float16", "both", w, r, m, baseline=True)
    print("x2", json.dumps({k: res["x2"].get(k) for k in ("jax_ms", "torch_ms", "torch_mode", "ratio")}), flush=True)
    res["x3"] = bench_inference(x3, prof["x3"], 1, "float16", "both", w, r, m, baseline=True)
    print("x3", json.dumps({k: res["x3"].get(k) for k in ("jax_ms", "torch_ms", "torch_mode", "ratio")}), flush=True)
    res["batch"] = bench_inference(x2, prof["x2"], prof["batch"], "float16", "both", w, r,
                                   m or ("compile_channels_last",))
    print("batch", json.dumps({k: res["batch"].get(k) for k in ("jax_ms", "torch_ms", "ratio")}), flush=True)
    res["dtypes"] = {"float16": res["x2"]["jax_ms"]}
    for dt in ("bfloat16", "float32"):
        res["dtypes"][dt] = bench_inference(x2, prof["x2"], 1, dt, "jax", w, r)["jax_ms"]
    print("dtypes", res["dtypes"], flush=True)
    res["rewrites"] = rewrite_variants(x2, prof["x2"], prof)
    res["runtime_fusion"] = runtime_fusion(prof["x2"], prof)
    print("runtime fusion", json.dumps(res["runtime_fusion"])[:300], flush=True)
    res["wall_s"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "results.md").write_text(markdown(res))
    print(f"wrote {out / 'results.md'} in {res['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
