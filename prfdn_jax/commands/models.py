"""``prfdn models``: the built-in models, or what a weights file holds."""

from __future__ import annotations

import json

HELP = "list built-in models, or describe a weights file"


def add_arguments(m) -> None:
    m.add_argument("--weights", metavar="PATH",
                   help="describe this model file instead (.pth, .safetensors or a training workdir): scale, "
                        "form, layout, parameters, GMACs")
    m.add_argument("--json", action="store_true", help="print JSON (a list of models, or one object)")


def _model_row(model, name: str, source: str = "") -> dict:
    from prfdn_jax.macs import summary

    s = summary(model, 1080, 1920)
    a = model.arch
    return {"name": name, "scale": a.scale, "form": a.form, "layout": a.layout, "params": s["params"],
            "gmac_1080p": round(s["gmac"], 4), "gmac_conv_1080p": round(s["gmac_conv"], 4), "source": source}


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
    rows = [_model_row(registry.load(n), n, i.source) for n, i in registry.MODELS.items()]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':<10} {'scale':>5} {'params':>9} {'GMAC@1080p':>11}  source")
    for r in rows:
        print(f"{r['name']:<10} {'x' + str(r['scale']):>5} {r['params']:>9,} {r['gmac_1080p']:>11.2f}  {r['source']}")
    print(f"default: {registry.DEFAULT_MODEL}; GMAC = conv + activation MACs at a 1920x1080 input "
          "(NTIRE 2023 definition)")
    return 0
