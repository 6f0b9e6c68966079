"""``prfdn models``: the built-in models, or what a weights file holds."""

from __future__ import annotations

import json

HELP = "list built-in models, or describe a weights file"


def add_arguments(m) -> None:
    m.add_argument("--weights", metavar="PATH",
                   help="describe this model file instead (.pth, .safetensors or a training workdir): scale, "
                        "form, layout, parameters, GMACs")
    m.add_argument("--json", action="store_true", help="print JSON (a list of models, or one object)")


OUT_4K = (2160, 3840)  # a 4K output: the input is 1080x1920 at x2, 720x1280 at x3, 540x960 at x4


def _model_row(model, name: str, source: str = "", psnr_y: dict | None = None) -> dict:
    """params; GMAC (``macs.macs``) at a 1920x1080 input and at the input of a 4K output (``size_4k``)."""
    from prfdn_jax.macs import summary

    a = model.arch
    s = summary(model, 1080, 1920)
    size = (OUT_4K[0] // a.scale, OUT_4K[1] // a.scale)
    row = {"name": name, "scale": a.scale, "form": a.form, "layout": a.layout, "params": s["params"],
           "gmac_1080p": round(s["gmac"], 4), "gmac_conv_1080p": round(s["gmac_conv"], 4),
           "size_4k": f"{size[0]}x{size[1]}", "gmac_4k": round(summary(model, *size)["gmac"], 4), "source": source}
    if psnr_y is not None:
        row["psnr_y"] = psnr_y
    return row


def run(args) -> int:
    from prfdn_jax import registry
    from prfdn_jax.checkpoint import load_any

    if args.weights:
        row = _model_row(load_any(args.weights), str(args.weights))
        if args.json:
            print(json.dumps(row))
        else:
            for k, v in row.items():
                if k != "source":
                    print(f"{k:<16} {v}")
        return 0
    rows = [_model_row(registry.load(n), n, i.source, i.psnr_y) for n, i in registry.MODELS.items()]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':<10} {'scale':>5} {'params':>9} {'GMAC@1080p':>11} {'GMAC@4K-out':>18} {'Set5':>6} {'Set14':>6}"
          "  source")
    for r in rows:
        p = r["psnr_y"]
        print(f"{r['name']:<10} {'x' + str(r['scale']):>5} {r['params']:>9,} {r['gmac_1080p']:>11.2f} "
              f"{r['gmac_4k']:>7.2f} @ {r['size_4k']:>8} {p.get('Set5', float('nan')):>6.2f} "
              f"{p.get('Set14', float('nan')):>6.2f}  {r['source']}")
    defaults = ", ".join(f"x{s}: {n}" for s, n in sorted(registry.DEFAULT_BY_SCALE.items()))
    print(f"default: {registry.DEFAULT_MODEL} ({defaults}); GMAC = conv + activation MACs (NTIRE 2023 definition) "
          "at a 1920x1080 input and at the input of a 3840x2160 output; PSNR: Y, MATLAB-bicubic LR")
    return 0
