#!/usr/bin/env bash
# Every accelerator measurement in one go: end to end vs the
# step (without and with periodic saves), a profile of where the device waits in a run, the
# step at batch 128 by steps per call, the speedrun's choice on validation and its time to 93%
# over 5 seeds with a cold and a warm compilation cache, and the best accuracy.
#
#   bash benchmarks/accelerator.sh OUT_DIR [NAME]      # NAME: the results' suffix (e.g. h200)
#   SCALE=tiny bash benchmarks/accelerator.sh /tmp/x   # a few-minute dry run (on a CPU too)
#
# Needs jax (with CUDA or TPU), flax, optax, orbax-checkpoint, ml-collections, tensorboard,
# and the Fashion-MNIST IDX files ($FMNIST_IDX_DIR or Debian's package); no TensorFlow.
# Each step writes its JSON (and logs) into a work folder; the JSONs are copied into OUT_DIR as
# soon as each step ends, and the rest is packed into OUT_DIR/logs.tar.gz. Every JSON records
# the git commit; on a copied tree without .git, set FMNIST_JAX_COMMIT=$(git rev-parse HEAD).
source "$(dirname "$0")/accelerator_lib.sh"

if [ "${SCALE:-}" = tiny ]; then
  SWEEP=(--batch-sizes 32 --dtypes float32 --train-images 640 --eval-images 640 --repeats 1
         --steps-per-call 2 4)
  E2E=(--epochs 1 --config.run.num_train_steps=30 --config.run.batch_size=32)
  SAVES=10
  PROFILE=(--config.run.num_train_steps=30 --config.run.batch_size=32 --config.parallelism.steps_per_call=2
           --config.logging.profile_steps="(10,20)")
  TINY=(--config.model.conv_features="(4,8,8)" --config.model.dense_features=16 --config.run.num_epochs=2
        --config.run.num_train_steps=20)
  SEARCH=(--only b512_e20 b1024_e20 "${TINY[@]}")
  TTA=(--target 0.2 --seeds 0 1 "${TINY[@]}")
  BEST=(--only b512_e150 b256_e150 --seeds 1 "${TINY[@]}")
else
  SWEEP=(--batch-sizes 128 --dtypes float32 bfloat16 --train-images 500000
         --eval-images 500000 --repeats 2 --steps-per-call 10 50)
  E2E=(--epochs 5)
  SAVES=200
  PROFILE=(--config.run.num_epochs=4 --config.logging.profile_steps="(429,1287)")  # epochs 2-3, 2 ends
  SEARCH=()
  TTA=(--target 0.93 --seeds 0 1 2 3 4)
  BEST=(--only b512_e150 b512_e300 b512_e150_erase b256_e150 --seeds 1 2)
fi

# 1. The whole run through main vs the step (a fresh, cold compilation cache).
JAX_COMPILATION_CACHE_DIR=$(mktemp -d) step end_to_end "$PY" -m benchmarks.end_to_end \
  --json "$WORK/end_to_end_$NAME.json" "${E2E[@]}"

# 1a. The same with a periodic save every SAVES steps (200: 2 per epoch): does a save, written
#     once later calls are queued, still cost the device time? (8 files come back: 7 JSONs)
JAX_COMPILATION_CACHE_DIR=$(mktemp -d) step end_to_end_saves "$PY" -m benchmarks.end_to_end \
  --json "$WORK/end_to_end_${NAME}_saves$SAVES.json" "${E2E[@]}" \
  --config.checkpoints.every_steps=$SAVES

# 1b. Where the device waits in such a run: a profile of two epochs and their ends.
step profile "$PY" -m fmnist_jax.main --config configs/default.py --workdir "$WORK/profiled" \
  --config.logging.write_report=False "${PROFILE[@]}"
step trace_gaps "$PY" -m fmnist_jax.trace_gaps "$WORK/profiled" \
  --json "$WORK/trace_gaps_$NAME.json"

# 2. The step at batch 128: do more steps per compiled call pay?
step throughput "$PY" -m benchmarks.throughput --json "$WORK/throughput_${NAME}_b128.json" \
  --parallelism jit --input-modes device --conv-impls xla "${SWEEP[@]}"

# 3. The speedrun's variant, chosen on validation; then its time to 93% test accuracy.
export JAX_COMPILATION_CACHE_DIR=$(mktemp -d)
step speedrun_search "$PY" -m benchmarks.speedrun_search --config configs/speedrun.py \
  --choose fastest:0.937 --json "$WORK/speedrun_search_$NAME.json" "${SEARCH[@]}"
CHOSEN=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen'])" \
  "$WORK/speedrun_search_$NAME.json")
step time_to_accuracy "$PY" -m benchmarks.time_to_accuracy --config "configs/speedrun.py:$CHOSEN" \
  --json "$WORK/time_to_accuracy_$NAME.json" "${TTA[@]}"

# 4. The best accuracy of the seed network: longer variants of configs/best.py on validation,
#    the best one over 3 seeds, plain and flip-averaged.
step best_accuracy "$PY" -m benchmarks.speedrun_search --config configs/best.py --choose best \
  --json "$WORK/best_accuracy_$NAME.json" "${BEST[@]}"

tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude='*.json' --exclude='*.xplane.pb' \
  --exclude='*.trace.json.gz' .  # (the profile's perfetto_trace.json.gz is kept)
ls -la "$OUT"
