"""The seed CNN in PyTorch (eager), timed like benchmarks/peers/keras_tf.py.

Fixed random batches in memory, 20 warm-up steps, then the median of repeated timed passes: a
training pass (forward, cross-entropy, backward, Adam 1e-3, dropout on) and an evaluation pass
(`torch.inference_mode`, dropout off), PyTorch's CPU defaults (one intra-op thread per core).
Prints one JSON object. Run it through `python -m benchmarks.peers.compare --peers torch`.
Needs torch (`pip install torch`, CPU wheels: --index-url https://download.pytorch.org/whl/cpu).

  python -m benchmarks.peers.torch_eager --batch-sizes 128 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def seed_cnn(nn):
  """Keras' layer order: Conv-ReLU-Pool-Dropout x2, Conv-ReLU, Flatten, Dense-ReLU-Dropout,
  Dense. NCHW, so the flatten order differs from the NHWC models; the function class is the same."""
  return nn.Sequential(
      nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
      nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.4),
      nn.Conv2d(64, 128, 3), nn.ReLU(), nn.Flatten(),
      nn.Linear(3 * 3 * 128, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
  parser.add_argument("--train-images", type=int, default=25_600)
  parser.add_argument("--eval-images", type=int, default=51_200)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  import torch
  from torch import nn

  torch.manual_seed(0)
  results = []
  for batch_size in args.batch_sizes:
    model = seed_cnn(nn)
    assert sum(p.numel() for p in model.parameters()) == 241_546
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    steps = args.train_images // batch_size
    # Loaded before timing (PEERS.md: fresh buffers every step cost up to 25% here).
    x = torch.rand(steps, batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (steps, batch_size))

    def train_pass(count):
      model.train()
      for i in range(count):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[i % steps]), y[i % steps])
        loss.backward()
        optimizer.step()

    train_pass(20)  # warm-up
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      train_pass(steps)
      times.append(time.perf_counter() - start)
    results.append({"step": "train", "batch_size": batch_size,
                    "images_per_second": statistics.median(steps * batch_size / t
                                                           for t in times)})
    eval_steps = args.eval_images // batch_size

    def eval_pass(count):
      model.eval()
      correct = 0
      with torch.inference_mode():
        for i in range(count):
          correct += int((model(x[i % steps]).argmax(1) == y[i % steps]).sum())
      return correct

    eval_pass(10)
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      eval_pass(eval_steps)
      times.append(time.perf_counter() - start)
    results.append({"step": "eval", "batch_size": batch_size,
                    "images_per_second": statistics.median(eval_steps * batch_size / t
                                                           for t in times)})
  print(json.dumps({"framework": "torch", "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
  main()
