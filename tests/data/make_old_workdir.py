"""Made the committed old-format workdir (tests/data/old_workdir, tests/data/old_workdir_step6.npz) with the code of 3792689.

Run from the repository root: python tests/data/make_old_workdir.py OUT (then copy OUT/old_workdir and
OUT/expected_step6.npz here). Kept for the record; the test only reads the files it wrote."""
import shutil, sys

from prfdn_jax.backends import configure_xla_flags

configure_xla_flags()  # as prfdn and the tests (conftest) run
from pathlib import Path
import numpy as np
from prfdn_jax import train
from prfdn_jax.checkpoint import flat_params, load_workdir_model
from prfdn_jax.config import load_config

set14 = "/work/shared/data/Set14/HR"
out = Path(sys.argv[1])
cfg = load_config("experiments/smoke_x2.py").replace(ema_decay=0.9, ckpt_every=2, keep=1)
w = out / "old_workdir"
s = train.train(cfg, w, [set14], steps=4, verbose=False)
print(s["step"], s["losses"])
r = out / "resumed"
shutil.copytree(w, r)
s6 = train.train(cfg, r, [set14], steps=6, verbose=False)
print(s6["start_step"], s6["step"], s6["losses"])
p, e = flat_params(load_workdir_model(r, ema=False)), flat_params(load_workdir_model(r, ema=True))
np.savez(out / "expected_step6.npz", **{"params/" + k: v for k, v in p.items()}, **{"ema/" + k: v for k, v in e.items()})
# the uninterrupted run agrees
u = train.train(cfg, out / "uninterrupted", [set14], steps=6, verbose=False)
pu = flat_params(load_workdir_model(out / "uninterrupted", ema=False))
print("uninterrupted equal:", all(np.array_equal(pu[k], p[k]) for k in p))
