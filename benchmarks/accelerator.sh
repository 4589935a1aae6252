#!/usr/bin/env bash
# Every accelerator measurement in one go (~5 minutes on one H100/H200): the step throughput
# sweep, end to end vs the step, and time to 93% with a cold and a warm compilation cache.
#
#   bash benchmarks/accelerator.sh OUT_DIR [NAME]      # NAME: the results' suffix (e.g. h200)
#   SCALE=tiny bash benchmarks/accelerator.sh /tmp/x   # a minute-long dry run (on a CPU too)
#
# Needs jax (with CUDA or TPU), flax, optax, orbax-checkpoint, ml-collections, tensorboard,
# and the Fashion-MNIST IDX files ($FMNIST_IDX_DIR or Debian's package); no TensorFlow.
# Each step writes its JSON, markdown and log into OUT_DIR as soon as it ends.
set -uo pipefail
OUT=${1:?usage: accelerator.sh OUT_DIR [NAME]}
NAME=${2:-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}

if [ "${SCALE:-}" = tiny ]; then
  SWEEP=(--batch-sizes 32 --dtypes float32 --train-images 640 --eval-images 640 --repeats 1)
  E2E=(--epochs 1 --config.num_train_steps=30 --config.batch_size=32)
  TTA=(--config configs/tiny.py --target 0.2 --config.num_train_steps=200)
else
  SWEEP=(--batch-sizes 128 1024 8192 --dtypes float32 bfloat16 --train-images 1000000
         --eval-images 2000000 --repeats 3)
  E2E=(--epochs 5)
  TTA=(--config configs/best.py --target 0.93)
fi

step() {  # step NAME COMMAND...: runs it, timing it, and says how it ended
  local name=$1; shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@"; local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
}

# 1. The compiled steps alone: jit, data resident on the device, lax.conv, 10 steps per call.
step throughput "$PY" -m benchmarks.throughput --json "$OUT/throughput_$NAME.json" \
  --parallelism jit --input-modes device --steps-per-call 10 --conv-impls xla "${SWEEP[@]}"

# 2. The whole run through main vs the step, each with a fresh (cold) compilation cache.
JAX_COMPILATION_CACHE_DIR=$(mktemp -d) step end_to_end "$PY" -m benchmarks.end_to_end \
  --json "$OUT/end_to_end_$NAME.json" "${E2E[@]}"
if [ "${SCALE:-}" != tiny ]; then
  JAX_COMPILATION_CACHE_DIR=$(mktemp -d) step end_to_end_b1024 "$PY" -m benchmarks.end_to_end \
    --json "$OUT/end_to_end_${NAME}_b1024.json" "${E2E[@]}" --config.batch_size=1024 \
    --config.learning_rate=4e-3
fi

# 3. Time to accuracy: the first run compiles into an empty cache, the second reuses it.
CACHE=$(mktemp -d)
for run in cold warm; do
  JAX_COMPILATION_CACHE_DIR=$CACHE step "time_to_accuracy_$run" \
    "$PY" -m benchmarks.time_to_accuracy --workdir "$(mktemp -d)/run" \
    --json "$OUT/time_to_accuracy_${NAME}_$run.json" "${TTA[@]}"
done
ls -la "$OUT"
