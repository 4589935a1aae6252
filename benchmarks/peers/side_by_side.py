"""fmnist_jax vs Keras (TensorFlow backend) and PyTorch, measured side by side in one sitting.

Alternates the benchmarks, each in its own process (Keras-TF: benchmarks/peers/keras_tf.py;
PyTorch eager: benchmarks/peers/torch_eager.py; fmnist_jax: benchmarks/throughput.py with the
CPU defaults: jit, device-resident data, im2col, 10 steps per call, automatic micro-batches),
for several rounds, and reports the median of each and fmnist_jax's ratio to each peer.
Keras-TF needs tensorflow-cpu and keras, PyTorch needs torch: `pip install -e '.[peers]'`.

  python -m benchmarks.peers.side_by_side --rounds 5 --peers keras_tf torch_eager \
      --json benchmarks/results/peers_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import ml_collections

from fmnist_jax import steps

PEERS = {"keras_tf": "Keras-TF", "torch_eager": "PyTorch eager"}


def _peer(name, batch_sizes, train_images, eval_images):
  out = subprocess.run([sys.executable, "-m", f"benchmarks.peers.{name}", "--batch-sizes",
                        *map(str, batch_sizes), "--repeats", "1", "--train-images",
                        str(train_images), "--eval-images", str(eval_images)],
                       check=True, capture_output=True, text=True).stdout
  report = json.loads(out.strip().splitlines()[-1])
  versions = {k: v for k, v in report.items() if k not in ("results", "framework")}
  return {(r["step"], r["batch_size"]): r["images_per_second"]
          for r in report["results"]}, versions


def _auto_microbatches(batch_size):
  """The default config's choice on one CPU device (config.parallelism.microbatches = 0)."""
  config = ml_collections.ConfigDict({"parallelism": {"microbatches": 0},
                                      "run": {"batch_size": batch_size}})
  return steps.resolve_microbatches(config, 1, "cpu")


def _ours(batch_size, train_images, eval_images):
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "bench.json"
    subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--json", str(path),
                    "--batch-sizes", str(batch_size), "--parallelism", "jit", "--input-modes",
                    "device", "--steps-per-call", "10", "--dtypes", "float32", "--conv-impls",
                    "im2col", "--microbatches",
                    str(_auto_microbatches(batch_size)), "--repeats", "1",
                    "--train-images", str(train_images), "--eval-images", str(eval_images)],
                   check=True, capture_output=True, text=True)
    report = json.loads(path.read_text())
  return {(r["step"], r["batch_size"]): r["images_per_second"] for r in report["results"]}, report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", required=True)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--peers", nargs="+", choices=sorted(PEERS), default=["keras_tf"])
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
  parser.add_argument("--train-images", type=int, default=25_600)
  parser.add_argument("--eval-images", type=int, default=51_200)
  args = parser.parse_args(argv)
  from benchmarks import common
  machine = common.machine()  # (the code that runs: recorded before it runs)
  runs = {name: [] for name in [*args.peers, "fmnist_jax"]}
  versions, report = {}, None
  for round_ in range(args.rounds):
    for name in args.peers:
      figures, versions[name] = _peer(name, args.batch_sizes, args.train_images,
                                      args.eval_images)
      runs[name].append(figures)
    ours = {}
    for batch_size in args.batch_sizes:
      figures, report = _ours(batch_size, args.train_images, args.eval_images)
      ours.update(figures)
    runs["fmnist_jax"].append(ours)
    print(f"round {round_ + 1}: " + "; ".join(f"{name} {figures[-1]}"
                                              for name, figures in runs.items()), flush=True)
  rows = []
  for key in sorted(runs["fmnist_jax"][0]):
    row = {"step": key[0], "batch_size": key[1]}
    for name, figures in runs.items():
      row[name] = statistics.median(run[key] for run in figures)
      row[f"{name}_rounds"] = [run[key] for run in figures]
    for name in args.peers:
      row[f"ratio_{name}"] = row["fmnist_jax"] / row[name]
    rows.append(row)
  result = {**machine, "rounds": args.rounds, "peers": args.peers,
            "versions": {**machine["versions"],
                         **{k: v for peer in versions.values() for k, v in peer.items()}},
            "results": rows}
  header = ["step", "batch", *(f"{PEERS[n]} images/s" for n in args.peers),
            "fmnist_jax images/s", *(f"vs {PEERS[n]}" for n in args.peers)]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for r in rows:
    cells = [r["step"], str(r["batch_size"]), *(f"{r[n]:,.0f}" for n in args.peers),
             f"{r['fmnist_jax']:,.0f}", *(f"{r['ratio_' + n]:.2f}x" for n in args.peers)]
    lines.append("| " + " | ".join(cells) + " |")
  lines.insert(0, f"{result['time']}, {result['processor']}, {result['cpu_count']} CPUs, "
                  f"medians of {args.rounds} rounds\n")
  common.write(args.json, result, "\n".join(lines))


if __name__ == "__main__":
  main()
