#!/usr/bin/env bash
# Distillation toward 94% on an accelerator, in one go: the teacher (5 seeds of
# configs/best.py:b512_e150 as one population), then benchmarks/distill.py: 3 students of the
# same recipe and epochs distilled (configs/distill.py:b512_e150, the teacher's forward passes
# on each augmented batch) against 3 plain ones, and the step's cost with the teacher
# precomputed or on the fly; last, the students with the teacher's predictions precomputed.
#
#   bash benchmarks/distill_accelerator.sh OUT_DIR [NAME]     # NAME: e.g. h200
#   SCALE=tiny bash benchmarks/distill_accelerator.sh /tmp/x  # a short dry run (a CPU too)
#
# Needs what benchmarks/accelerator.sh needs (no TensorFlow). Two JSONs come back, copied to
# OUT_DIR as each step ends; the logs are packed into OUT_DIR/distill_logs.tar.gz.
source "$(dirname "$0")/accelerator_lib.sh"

if [ "${SCALE:-}" = tiny ]; then
  TEACHER_CONFIG=configs/best.py STUDENT_CONFIG=configs/distill.py SEEDS="(0, 1)"
  TINY=(--config.model.conv_features="(4,8,8)" --config.model.dense_features=16
        --config.run.num_train_steps=20)
else
  TEACHER_CONFIG=configs/best.py:b512_e150 STUDENT_CONFIG=configs/distill.py:b512_e150
  SEEDS="(0, 1, 2, 3, 4)" TINY=()
fi

# 1. The teacher: 5 seeds in one program.
step teacher "$PY" -m fmnist_jax.main --config "$TEACHER_CONFIG" --workdir "$WORK/teacher" \
  --config.logging.write_report=False "--config.population.members=((\"run.seed\", $SEEDS),)" \
  "${TINY[@]}"

# 2. Students, 3 seeds as one population: distilled (the teacher on the fly) vs plain; the
# step's cost.
step distill "$PY" -m benchmarks.distill --config "$STUDENT_CONFIG" --teacher "$WORK/teacher" \
  --json "$WORK/distill_on_the_fly_$NAME.json" --workdir-root "$WORK/students" --seeds 0 1 2 \
  --config.distill.teacher_sees=on_the_fly "${TINY[@]}"

# 3. The same students with the teacher's predictions precomputed (the plain arm reused).
step distill_precomputed "$PY" -m benchmarks.distill --config "$STUDENT_CONFIG" \
  --teacher "$WORK/teacher" --json "$WORK/distill_precomputed_$NAME.json" \
  --workdir-root "$WORK/students" --seeds 0 1 2 --config.distill.teacher_sees=precomputed \
  "${TINY[@]}"

tar -czf "$OUT/distill_logs.tar.gz" -C "$WORK" --exclude='*.json' --exclude='checkpoints' .
ls -la "$OUT"
