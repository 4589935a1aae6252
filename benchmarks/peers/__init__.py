"""The same CNN in other frameworks, timed the same way (benchmarks/peers/side_by_side.py)."""

from __future__ import annotations

import argparse
import statistics
import time


def parse_args(argv=None, description=None) -> argparse.Namespace:
  """The command line every peer script shares (compare.py passes these)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
  parser.add_argument("--train-images", type=int, default=25_600)
  parser.add_argument("--eval-images", type=int, default=51_200)
  parser.add_argument("--repeats", type=int, default=3)
  return parser.parse_args(argv)


def median_images_per_second(timed_pass, images: int, repeats: int) -> float:
  """Runs `timed_pass()` (which processes `images` images) `repeats` times: the median rate."""
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    timed_pass()
    rates.append(images / (time.perf_counter() - start))
  return statistics.median(rates)
