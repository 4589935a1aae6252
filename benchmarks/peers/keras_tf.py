"""The seed CNN in Keras on the TensorFlow backend, timed like benchmarks/throughput.py.

Fixed random batches in memory, warm-up, then the median of repeated timed runs of
`model.fit` (training) and `model.evaluate` (evaluation), Keras' CPU defaults (no XLA).
Prints one JSON object. Run it through `python -m benchmarks.peers.side_by_side`, which
alternates it with fmnist_jax's own benchmark so both are measured in the same sitting.

  python -m benchmarks.peers.keras_tf --batch-sizes 128 512
"""

from __future__ import annotations

import json
import os

from benchmarks.peers import median_images_per_second, parse_args

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
  args = parse_args(argv, __doc__.splitlines()[0])
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
    results.append({"step": "train", "batch_size": batch_size,
                    "images_per_second": median_images_per_second(
                        lambda: model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0,
                                          shuffle=False), args.train_images, args.repeats)})
    xe = np.concatenate([x] * max(1, args.eval_images // args.train_images))[:args.eval_images]
    ye = rng.integers(0, 10, len(xe))
    model.evaluate(xe[:10 * batch_size], ye[:10 * batch_size], batch_size=batch_size, verbose=0)
    results.append({"step": "eval", "batch_size": batch_size,
                    "images_per_second": median_images_per_second(
                        lambda: model.evaluate(xe, ye, batch_size=batch_size, verbose=0),
                        len(xe), args.repeats)})
  print(json.dumps({"framework": "keras-tf", "keras": keras.__version__,
                    "tensorflow": tf.__version__, "results": results}))


if __name__ == "__main__":
  main()
