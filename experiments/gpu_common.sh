# Sourced by the lent-GPU scripts (gpu_session.sh, gpu_throughput.sh): the call's output folder, its log and
# its clock. Needs OUT and TOTAL (seconds the call may take); sets ROOT (the checkout, the working directory),
# PY, START and left() (seconds left); XLA_FLAGS is set empty: our CPU flag may be unknown to another jaxlib,
# and an unknown flag aborts XLA.
START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
left() { echo $((TOTAL - ($(date +%s) - START))); }
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_FLAGS=
