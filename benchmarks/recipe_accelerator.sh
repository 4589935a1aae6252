#!/usr/bin/env bash
# The speedrun round two (docs/recipe.md) on an accelerator, in one go: the ablation of
# configs/speedrun.py (5 seeds as one population per row) at 10 and 20 epochs, the speedrun's
# time to 93% test over 5 seeds with a cold and a warm cache, and the best accuracy of the
# seed network with the round's options (configs/best.py's *_r2 variants, 3 seeds).
#
#   bash benchmarks/recipe_accelerator.sh OUT_DIR [NAME]      # NAME: e.g. h200
#   SCALE=tiny PYTHON=.venv/bin/python bash benchmarks/recipe_accelerator.sh /tmp/x  # dry run
#
# Needs what benchmarks/accelerator.sh needs (no TensorFlow). Four JSONs come back, copied to
# OUT_DIR as each step ends; the logs are packed into OUT_DIR/recipe_logs.tar.gz.
source "$(dirname "$0")/accelerator_lib.sh"

if [ "${SCALE:-}" = tiny ]; then
  TINY=(--config.model.conv_features="(20,8,8)" --config.model.dense_features=16
        --config.run.num_train_steps=4 --config.run.batch_size=64)
  ABLATION=(--seeds 0 1 --rows baseline dirac --target 0.2 "${TINY[@]}")
  EPOCHS=(1 2)
  TTA=(--target 0.2 --seeds 0 1 "${TINY[@]}")
  BEST=(--only b512_e150_r2 --seeds 1 "${TINY[@]}")
else
  ABLATION=(--seeds 0 1 2 3 4)
  EPOCHS=(10 20)
  TTA=(--target 0.93 --seeds 0 1 2 3 4)
  BEST=(--only b512_e150_r2 b512_e300_r2 --seeds 0 1 2)
fi
export JAX_COMPILATION_CACHE_DIR=$(mktemp -d)

# 1. The ablation: epochs to 93.0% flip-averaged validation accuracy, each option in turn.
for epochs in "${EPOCHS[@]}"; do
  step "ablation_e$epochs" "$PY" -m benchmarks.ablation --epochs "$epochs" \
    --workdir-root "$WORK/ablation_e$epochs" --json "$WORK/ablation_${NAME}_e$epochs.json" \
    "${ABLATION[@]}"
done

# 2. The speedrun (configs/speedrun.py's CHOSEN): seconds to 93% test, cold and warm caches.
step time_to_accuracy "$PY" -m benchmarks.time_to_accuracy --config configs/speedrun.py \
  --json "$WORK/time_to_accuracy_${NAME}_r2.json" "${TTA[@]}"

# 3. The best accuracy with the round's options: 3 seeds each, plain and flip-averaged.
step best_accuracy "$PY" -m benchmarks.speedrun_search --config configs/best.py --choose best \
  --json "$WORK/best_accuracy_${NAME}_r2.json" "${BEST[@]}"

tar -czf "$OUT/recipe_logs.tar.gz" -C "$WORK" --exclude='*.json' --exclude='checkpoints' .
ls -la "$OUT"
