"""The seed CNN in Keras on the TensorFlow backend, timed like benchmarks/throughput.py.

Fixed random batches in memory, warm-up, then the median of repeated timed runs of
`model.fit` (training) and `model.evaluate` (evaluation), Keras' CPU defaults (no XLA).
Prints one JSON object. Run it through `python -m benchmarks.peers.compare`, which alternates it
with fmnist_jax's own benchmark so both are measured in the same sitting.

  python -m benchmarks.peers.keras_tf --batch-sizes 128 512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def seed_cnn(keras):
  layers = keras.layers
  model = keras.Sequential([
      keras.Input((28, 28, 1)),
      layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2), layers.Dropout(0.25),
      layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2), layers.Dropout(0.4),
      layers.Conv2D(128, 3, activation="relu"), layers.Flatten(),
      layers.Dense(128, activation="relu"), layers.Dropout(0.3), layers.Dense(10)])
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
  parser.add_argument("--train-images", type=int, default=25_600)
  parser.add_argument("--eval-images", type=int, default=51_200)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  import keras
  import numpy as np
  import tensorflow as tf

  rng = np.random.default_rng(0)
  results = []
  for batch_size in args.batch_sizes:
    model = seed_cnn(keras)
    assert model.count_params() == 241_546
    x = rng.random((args.train_images, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, args.train_images)
    model.fit(x[:20 * batch_size], y[:20 * batch_size], batch_size=batch_size, epochs=1,
              verbose=0)  # warm-up: 20 steps
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
      times.append(time.perf_counter() - start)
    results.append({"step": "train", "batch_size": batch_size,
                    "images_per_second": statistics.median(args.train_images / t for t in times)})
    xe = np.concatenate([x] * max(1, args.eval_images // args.train_images))[:args.eval_images]
    ye = rng.integers(0, 10, len(xe))
    model.evaluate(xe[:10 * batch_size], ye[:10 * batch_size], batch_size=batch_size, verbose=0)
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      model.evaluate(xe, ye, batch_size=batch_size, verbose=0)
      times.append(time.perf_counter() - start)
    results.append({"step": "eval", "batch_size": batch_size,
                    "images_per_second": statistics.median(len(xe) / t for t in times)})
  print(json.dumps({"framework": "keras-tf", "keras": keras.__version__,
                    "tensorflow": tf.__version__, "results": results}))


if __name__ == "__main__":
  main()
