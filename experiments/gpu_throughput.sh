#!/usr/bin/env bash
# Issue 18's GPU measurements in one lent-GPU call, prepared here and checked on the CPU first (PRFDN_SMOKE=1):
#   1. versions;
#   2. `prfdn bench folder` (60 images of distinct sizes 100-400 px, first and second run, with and without buckets,
#      against one size; on the device buckets off and auto) at float16 -> OUT/folder.txt, OUT/folder.json;
#   3. the video pipeline at 1080x1920 -> 3840x2160, float16, against the network alone in the same run
#      (experiments/video_pipeline.py) -> OUT/video.txt, OUT/video.json.
# gpu_inference.py is not repeated here: it ran on 2026-12-04 (BENCHMARKS.md, "GPU inference").
#
#   here:    bash experiments/gpu_throughput.sh --make-carry      (makes .whl_video: PyAV for py3.12, 36 MB)
#   device:  bash experiments/gpu_throughput.sh "$OUT" 540        (carry .whl_video)
#   CPU:     PRFDN_SMOKE=1 bash experiments/gpu_throughput.sh /tmp/gpu_throughput 300
#
# The device image has jax, flax, optax, numpy and pillow but not PyAV; `prfdn upscale` needs nothing else.
set -u
if [ "${1:-}" = "--make-carry" ]; then
  cd "$(dirname "$0")/.."; PY=${PYTHON:-python}
  grep -qx "/.whl_video/" .git/info/exclude || echo "/.whl_video/" >> .git/info/exclude
  AV=$($PY -c "import av; print(av.__version__)")
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl_video "av==$AV"
  du -sh .whl_video; exit 0
fi
OUT=${1:?usage: gpu_throughput.sh OUT [TOTAL_S] | gpu_throughput.sh --make-carry}
TOTAL=${2:-540}
. "$(dirname "$0")/gpu_common.sh"  # ROOT (cwd), PY, left(), the log in OUT

if [ -n "${PRFDN_SMOKE:-}" ]; then
  FOLDER_ARGS=(--images 4 --buckets off,auto)
  VIDEO_ARGS=(--size 48x64 --frames 6 --rounds 1)
else
  if [ -d .whl_video ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_video .whl_video/*.whl
  fi
  export PYTHONPATH=$ROOT:/tmp/site_video
  FOLDER_ARGS=(--buckets off,auto)  # with and without buckets; 128 would add two GPU processes
  VIDEO_ARGS=(--size 1080x1920 --frames 60 --rounds 2)
fi
export PYTHONPATH=${PYTHONPATH:-$ROOT}

echo "== versions ($(date -u +%FT%TZ))"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
$PY -c 'import sys, jax, flax, numpy
print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "numpy", numpy.__version__,
      "devices", jax.devices())
try:
    import av; print("av", av.__version__)
except ImportError: print("av missing: the video step will fail")'
PRFDN="$PY -c 'import sys; from prfdn_jax.cli import main; sys.exit(main(sys.argv[1:]))'"

echo "== 2. folder, float16 ($(left) s left)"
timeout -k 10 $(( $(left) * 6 / 10 )) bash -c "$PRFDN bench folder --dtype float16 ${FOLDER_ARGS[*]} --json" \
  > "$OUT/folder.log" 2>&1
echo "bench folder exit $?"
grep -Ev '^[[{]' "$OUT/folder.log" | tee "$OUT/folder.txt"; grep -E '^[[{]' "$OUT/folder.log" > "$OUT/folder.json"

echo "== 3. video 1080p -> 4K, float16 ($(left) s left)"
timeout -k 10 $(( $(left) - 20 )) $PY experiments/video_pipeline.py --dtype float16 --presets veryfast,medium \
  --no-one-thread "${VIDEO_ARGS[@]}" --json > "$OUT/video.log" 2>&1
echo "video exit $?"
grep -Ev '^[[{]' "$OUT/video.log" | tee "$OUT/video.txt"; grep -E '^[[{]' "$OUT/video.log" > "$OUT/video.json"
echo "== done in $(( $(date +%s) - START )) s"
