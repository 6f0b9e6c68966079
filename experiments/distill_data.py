"""Teacher-labelled training pairs, for output distillation (issue 16 experiment).

    python experiments/distill_data.py SRC OUT [--teacher rfdn-x4] [--no-mix]

SRC is a prepared dataset (``prfdn prepare``). Every pair (HR, LR) of it gives a pair (T, LR), where T is
the teacher's output on the whole LR sub-image, rounded to uint8 like any image the teacher writes. OUT holds
the ground-truth pairs followed by the teacher pairs (``--no-mix``: the teacher pairs only), so a batch draws
from both: in expectation, an equal mix of the ground-truth loss and the distillation loss. OUT is an ordinary
prepared dataset (same sidecar format, with a ``teacher`` entry): train on it as on SRC.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def teacher_pairs(src_meta: dict, teacher: str):
    """Yield ``(record, (h, w))`` of every SRC pair relabelled by ``teacher`` (LR unchanged)."""
    import grain

    from prfdn_jax import registry
    from prfdn_jax.data import decode_pair
    from prfdn_jax.inference import make_apply, to_uint8
    from prfdn_jax.prepare import encode_pair

    model = registry.load(teacher)
    if registry.info(teacher).scale != src_meta["scale"]:
        raise SystemExit(f"{teacher} is x{registry.info(teacher).scale}; the pairs are x{src_meta['scale']}")
    apply = make_apply(model)
    records = grain.sources.ArrayRecordDataSource(src_meta["records"])
    for i in range(len(records)):
        pair = decode_pair(records[i])
        out = to_uint8(apply(pair["lr"][None].astype(np.float32))[0])
        yield encode_pair(out, pair["lr"], src_meta["scale"]), pair["hr"].shape[:2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--teacher", default="rfdn-x4")
    ap.add_argument("--no-mix", action="store_true", help="teacher pairs only (default: ground truth, then teacher)")
    a = ap.parse_args(argv)
    import grain

    from prfdn_jax.data import prepared_paths, read_sidecar
    from prfdn_jax.fileio import atomic_write
    from prfdn_jax.prepare import record_writer

    meta = read_sidecar(a.src)
    records, side = prepared_paths(a.out)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    t0, shapes = time.perf_counter(), []
    with atomic_write(records, mode=0o644) as tmp:
        writer = record_writer(tmp)
        try:
            if not a.no_mix:
                src = grain.sources.ArrayRecordDataSource(meta["records"])
                for i in range(len(src)):
                    writer.write(src[i])
                shapes += [list(s) for s in meta["shapes"]]
            for k, (rec, hw) in enumerate(teacher_pairs(meta, a.teacher)):
                writer.write(rec)
                shapes.append(list(hw))
                if k % 50 == 0:
                    print(f"[distill_data] {k}/{meta['count']} teacher pairs ({time.perf_counter() - t0:.0f} s)",
                          flush=True)
        finally:
            writer.close()
    out_meta = {k: v for k, v in meta.items() if k not in ("records", "shapes", "count", "bytes")}
    out_meta.update(records=records.name, count=len(shapes), bytes=records.stat().st_size, shapes=shapes,
                    teacher={"model": a.teacher, "source": str(Path(a.src).resolve()), "mixed": not a.no_mix,
                             "rounding": "uint8, round half to even"})
    with atomic_write(side, mode=0o644) as tmp_side:
        tmp_side.write_text(json.dumps(out_meta, separators=(",", ":")) + "\n")
    print(f"[distill_data] {len(shapes)} pairs -> {a.out} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
