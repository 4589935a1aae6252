"""The seed CNN in PyTorch (eager), timed like benchmarks/peers/keras_tf.py.

Fixed random batches in memory, 20 warm-up steps, then the median of repeated timed passes: a
training pass (forward, cross-entropy, backward, Adam 1e-3, dropout on) and an evaluation pass
(`torch.inference_mode`, dropout off), PyTorch's CPU defaults (one intra-op thread per core).
Prints one JSON object. Run it through `python -m benchmarks.peers.side_by_side --peers torch`.
Needs torch (`pip install torch`, CPU wheels: --index-url https://download.pytorch.org/whl/cpu).

  python -m benchmarks.peers.torch_eager --batch-sizes 128 512
"""

from __future__ import annotations

import ctypes
import json

from benchmarks.peers import median_images_per_second, parse_args


def keep_freed_memory():
  """glibc's malloc returns large freed blocks to the OS and maps them again on the next step,
  which slows PyTorch eager (docs/peers.md): keep them (what
  MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ do), so the peer is timed at its best."""
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  m_trim_threshold, m_mmap_threshold = -1, -3
  return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) and
              libc.mallopt(m_trim_threshold, 2**30))


def seed_cnn(nn):
  """Keras' layer order: Conv-ReLU-Pool-Dropout x2, Conv-ReLU, Flatten, Dense-ReLU-Dropout,
  Dense. NCHW, so the flatten order differs from the NHWC models; the function class is the same."""
  return nn.Sequential(
      nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
      nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.4),
      nn.Conv2d(64, 128, 3), nn.ReLU(), nn.Flatten(),
      nn.Linear(3 * 3 * 128, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))


def main(argv=None):
  args = parse_args(argv, __doc__.splitlines()[0])
  tuned_malloc = keep_freed_memory()
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
    # Loaded before timing: fresh buffers every step would time the allocator.
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
    results.append({"step": "train", "batch_size": batch_size,
                    "images_per_second": median_images_per_second(
                        lambda: train_pass(steps), steps * batch_size, args.repeats)})
    eval_steps = args.eval_images // batch_size

    def eval_pass(count):
      model.eval()
      correct = 0
      with torch.inference_mode():
        for i in range(count):
          correct += int((model(x[i % steps]).argmax(1) == y[i % steps]).sum())
      return correct

    eval_pass(10)
    results.append({"step": "eval", "batch_size": batch_size,
                    "images_per_second": median_images_per_second(
                        lambda: eval_pass(eval_steps), eval_steps * batch_size, args.repeats)})
  print(json.dumps({"framework": "torch", "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "tuned_malloc": tuned_malloc,
                    "results": results}))


if __name__ == "__main__":
  main()
