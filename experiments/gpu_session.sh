#!/usr/bin/env bash
# One lent-GPU call, prepared here and checked on the CPU first (PRFDN_SMOKE=1):
#   1. versions, then experiments/gpu_inference.py unchanged (the deploy compiler on the GPU) -> OUT/gpu/
#      (INFERENCE=0 skips it: it ran on 2026-12-04, BENCHMARKS.md "GPU inference");
#   2. a prfdn-x4 finetune stage (STAGE=NAME, default prfdn_x4_b2_keepesa; its run folder and settings
#      below) continued on the GPU until the deadline, paused with SIGINT (it checkpoints), and the workdir
#      brought back as OUT/prfdn_x4_finetune.tar. STEPS beyond the stage's own restarts its cosine over a
#      longer horizon (a warm restart). A distillation stage (--teacher) remakes its teacher pairs on the device first.
#
#   here:    bash experiments/gpu_session.sh --make-carry      (makes .whl and .gpu_data, 54 MB)
#   device:  bash experiments/gpu_session.sh "$OUT" 570        (carry .whl and .gpu_data)
#   CPU:     PRFDN_SMOKE=1 bash experiments/gpu_session.sh /tmp/gpu_session 240
#
# .whl: py3.12 wheels the device image lacks (grain, array_record, portpicker, tensorboardX) and our pinned
# flax/optax/orbax (used only if they import with the device's JAX; else the device's own are used: on
# 2026-12-04 flax 0.12.8 did not import with jax 0.11.2, and its flax 0.12.10 ran everything).
# .gpu_data: Set5/Set14 (HR + x4 LR) and the training images that fit the 64 MiB carry (T91 and
# General100 as lossless PNG, BSDS500_test200); BSD200 does not fit, so the GPU part trains on 341 of 541.
set -u
if [ "${1:-}" = "--make-carry" ]; then  # here, once: the two carried folders (git-ignored via .git/info/exclude)
  cd "$(dirname "$0")/.."; S=${PRFDN_SHARED:-../shared}; PY=${PYTHON:-python}
  for d in /.whl/ /.gpu_data/; do grep -qx "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 grain==0.2.18 array-record==0.8.6 portpicker tensorboardX
  rm -rf .gpu_data; mkdir -p .gpu_data/data/train
  for v in Set5 Set14; do mkdir -p .gpu_data/data/$v/LR_bicubic; cp -r "$S/data/$v/HR" .gpu_data/data/$v/
    cp -r "$S/data/$v/LR_bicubic/X4" .gpu_data/data/$v/LR_bicubic/; done
  cp -r "$S/data/train/BSDS500_test200" .gpu_data/data/train/
  $PY -c "import sys; from pathlib import Path; from PIL import Image
for s in ('T91', 'General100'):
    (Path('.gpu_data/data/train') / s).mkdir()
    for f in sorted((Path(sys.argv[1]) / 'data/train' / s).glob('*.bmp')):
        Image.open(f).save(Path('.gpu_data/data/train') / s / (f.stem + '.png'), optimize=True)" "$S"
  du -sh .whl .gpu_data; exit 0
fi
# The stage to continue: experiments/runs/$STAGE, with the settings it was started with (its runs.jsonl).
STAGE=${STAGE:-prfdn_x4_b2_keepesa}
case "$STAGE" in
  prfdn_x4_kd) STAGE_ARGS=(--teacher rfdn-x4); STAGE_SETS=(patch=256 batch=8 lr=5e-5 schedule=cosine seed=303 loss=l2) ;;
  prfdn_x4_gentle_s1) STAGE_ARGS=(); STAGE_SETS=(impl=dense) ;;  # the profile's constant lr 2e-4, batch 16, patch 128
  prfdn_x4_b2) STAGE_ARGS=(); STAGE_SETS=(impl=dense) ;;  # B2 pruned: the same first-stage recipe
  prfdn_x4_b2_p256) STAGE_ARGS=(); STAGE_SETS=(patch=256 batch=8 lr=1e-4 schedule=cosine seed=101 impl=dense) ;;
  prfdn_x4_b2_cos) STAGE_ARGS=(); STAGE_SETS=(lr=1e-4 schedule=cosine seed=102 impl=dense) ;;
  prfdn_x4_b2_keepesa) STAGE_ARGS=(); STAGE_SETS=(impl=dense) ;;  # B2 pruned with ESA whole: the first-stage recipe
  *) echo "gpu_session.sh: unknown STAGE $STAGE (add its settings here)" >&2; exit 2 ;;
esac
OUT=${1:?usage: gpu_session.sh OUT [TOTAL_S] | gpu_session.sh --make-carry}
TOTAL=${2:-570}
. "$(dirname "$0")/gpu_common.sh"  # ROOT (cwd), PY, left(), the log in OUT

if [ -n "${PRFDN_SMOKE:-}" ]; then
  SHARED=${PRFDN_SHARED:-$ROOT/../shared}
  RUN=$(mktemp -d)/$STAGE; cp -r "experiments/runs/$STAGE" "$RUN"
  STEPS=$(( $(ls "$RUN/finetune/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -1) + 10 ))
  GPU_ARGS=(--cpu-smoke)
  TRAIN_SETS=(log_every=5 ckpt_every=5)
else
  SHARED=$ROOT/.gpu_data
  RUN=$ROOT/experiments/runs/$STAGE
  STEPS=${STEPS:-40000}
  GPU_ARGS=()
  TRAIN_SETS=(log_every=500 ckpt_every=2000)
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_core \
      .whl/grain-*.whl .whl/array_record-*.whl .whl/portpicker-*.whl .whl/tensorboardx-*.whl
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_flax \
      .whl/flax-*.whl .whl/optax-*.whl .whl/orbax_checkpoint-*.whl
  fi
  export PYTHONPATH=$ROOT:/tmp/site_core
  CHECK='import flax, optax, orbax.checkpoint, grain, jax; from prfdn_jax import registry; import numpy as np
m = registry.load("prfdn-x2"); print("check ok", jax.devices()[0], np.asarray(m(np.zeros((1, 32, 32, 3), np.float32))).shape)'
  if PYTHONPATH=$ROOT:/tmp/site_flax:/tmp/site_core $PY -c "$CHECK"; then
    export PYTHONPATH=$ROOT:/tmp/site_flax:/tmp/site_core; echo "using the carried flax 0.12.8 / optax / orbax"
  else
    echo "the carried flax does not import with this JAX: using the device's own"; $PY -c "$CHECK"
  fi
fi
export PYTHONPATH=${PYTHONPATH:-$ROOT}

echo "== versions ($(date -u +%FT%TZ))"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
$PY -c 'import sys, jax, flax, optax, orbax.checkpoint as oc, numpy
print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "numpy", numpy.__version__, "devices", jax.devices())
try:
    import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)
except ImportError: print("torch missing")'

if [ "${INFERENCE:-1}" != 0 ]; then
  echo "== 1. gpu_inference ($(left) s left)"
  timeout -k 10 $(( $(left) - 120 )) $PY experiments/gpu_inference.py --out "$OUT/gpu" "${GPU_ARGS[@]}" 2>&1 \
    | tee "$OUT/gpu_inference.log"
  echo "gpu_inference exit ${PIPESTATUS[0]}"
fi

echo "== 2. prfdn-x4 finetune to step $STEPS ($(left) s left)"
T=$(( $(left) - 30 ))
if [ "$T" -gt 30 ]; then
  # SIGINT at the deadline: the run checkpoints and stops (resumes bit-exactly from there)
  timeout -s INT -k 25 "$T" $PY experiments/prfdn_x4.py --run "$RUN" --shared "$SHARED" --steps "$STEPS" \
    "${STAGE_ARGS[@]}" --set "${STAGE_SETS[@]}" compute_dtype=float32 val_every=100000000 "${TRAIN_SETS[@]}" \
    2>&1 | tee "$OUT/train.log" | grep -v '^\s*$' | tail -40
  echo "train exit ${PIPESTATUS[0]}"
fi
tar -cf "$OUT/prfdn_x4_finetune.tar" -C "$RUN" finetune
ls -la "$RUN/finetune/checkpoints"; tail -3 "$RUN/finetune/metrics.csv"
echo "== done in $(( $(date +%s) - START )) s"
