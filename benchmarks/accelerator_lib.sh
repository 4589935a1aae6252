# What the accelerator scripts share (sourced, not run): their arguments, folders and `step`.
#   OUT   where the JSONs (and one archive of the logs) come back: $1
#   NAME  the results' suffix (e.g. h200): $2, default gpu
#   WORK  the work folder, outside OUT (only the JSONs and the archive come back)
#   PY    the Python to run ($PYTHON, default python3)
set -uo pipefail
OUT=${1:?usage: bash benchmarks/<script>.sh OUT_DIR [NAME]}
NAME=${2:-gpu}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}

step() {  # step NAME COMMAND...: runs it, timing it, says how it ended, copies the JSONs out
  local name=$1; shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@"; local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  cp "$WORK"/*.json "$OUT"/ 2>/dev/null
}
