#!/usr/bin/env bash
# Populations (docs/population.md) on an accelerator, in one go: the train and eval steps with
# 1, 4, 16 and 64 members side by side against one model, the 10-member dropout study end to
# end against one default run, and the speedrun's 5 seeds as one population.
#
#   bash benchmarks/population_accelerator.sh OUT_DIR [NAME]    # NAME: e.g. h200
#   SCALE=tiny bash benchmarks/population_accelerator.sh /tmp/x  # a short dry run (a CPU too)
#
# Needs what benchmarks/accelerator.sh needs (no TensorFlow). Three JSONs come back, copied to
# OUT_DIR as each step ends; the logs are packed into OUT_DIR/population_logs.tar.gz.
source "$(dirname "$0")/accelerator_lib.sh"

if [ "${SCALE:-}" = tiny ]; then
  SWEEP=(--batch-sizes 32 --members 1 2 --dtypes float32 --train-images 256 --eval-images 256
         --repeats 1 --steps-per-call 2)
  TINY=(--config.model.conv_features="(4,8,8)" --config.model.dense_features=16
        --config.run.num_train_steps=20)
  STUDY=("${TINY[@]}")
  TTA=(--target 0.2 --seeds 0 1 "${TINY[@]}")
else
  SWEEP=(--batch-sizes 128 512 --members 1 4 16 64 --dtypes float32 bfloat16
         --train-images 500000 --eval-images 500000 --repeats 2 --steps-per-call 10)
  STUDY=()
  TTA=(--target 0.93 --seeds 0 1 2 3 4)
fi

# 1. Images/s summed over the members (side by side: population.per_pass 0), both conv forms.
step throughput "$PY" -m benchmarks.throughput --json "$WORK/population_$NAME.json" \
  --parallelism jit --input-modes device --conv-impls xla im2col --members-per-pass 0 \
  "${SWEEP[@]}"

# 2. configs/dropout_study.py (10 members, 15 epochs) end to end vs one default run.
export JAX_COMPILATION_CACHE_DIR=$(mktemp -d)
step dropout_study "$PY" -m benchmarks.population_study --config configs/dropout_study.py \
  --json "$WORK/dropout_study_$NAME.json" --workdir "$WORK/study" "${STUDY[@]}"

# 3. The speedrun's seeds as one population, warm cache (a primed one).
step time_to_accuracy "$PY" -m benchmarks.time_to_accuracy --config configs/speedrun.py \
  --population --caches warm --json "$WORK/time_to_accuracy_population_$NAME.json" "${TTA[@]}"

tar -czf "$OUT/population_logs.tar.gz" -C "$WORK" --exclude='*.json' --exclude='checkpoints' .
ls -la "$OUT"
