"""fmnist_jax vs Keras (TensorFlow backend), measured side by side in one sitting.

Alternates the two benchmarks, each in its own process (Keras-TF: benchmarks/peers/keras_tf.py;
fmnist_jax: benchmarks/throughput.py with the CPU defaults: jit, device-resident data, im2col,
10 steps per call, micro-batches of 32 images), for several rounds, and reports the median of
each and their ratio. Needs tensorflow-cpu (already a dependency) and keras.

  python -m benchmarks.peers.compare --rounds 3 --json benchmarks/results/peers_cpu.json
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


def _keras(batch_sizes, train_images, eval_images):
  out = subprocess.run([sys.executable, "-m", "benchmarks.peers.keras_tf", "--batch-sizes",
                        *map(str, batch_sizes), "--repeats", "1", "--train-images",
                        str(train_images), "--eval-images", str(eval_images)],
                       check=True, capture_output=True, text=True).stdout
  return {(r["step"], r["batch_size"]): r["images_per_second"]
          for r in json.loads(out.strip().splitlines()[-1])["results"]}


def _ours(batch_size, train_images, eval_images):
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "bench.json"
    subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--json", str(path),
                    "--batch-sizes", str(batch_size), "--parallelism", "jit", "--input-modes",
                    "device", "--steps-per-call", "10", "--dtypes", "float32", "--conv-impls",
                    "im2col", "--microbatches", str(max(1, batch_size // 32)), "--repeats", "1",
                    "--train-images", str(train_images), "--eval-images", str(eval_images)],
                   check=True, capture_output=True, text=True)
    report = json.loads(path.read_text())
  return {(r["step"], r["batch_size"]): r["images_per_second"] for r in report["results"]}, report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", required=True)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
  parser.add_argument("--train-images", type=int, default=25_600)
  parser.add_argument("--eval-images", type=int, default=51_200)
  args = parser.parse_args(argv)
  keras_runs, our_runs, report = [], [], None
  for round_ in range(args.rounds):
    keras_runs.append(_keras(args.batch_sizes, args.train_images, args.eval_images))
    ours = {}
    for batch_size in args.batch_sizes:
      figures, report = _ours(batch_size, args.train_images, args.eval_images)
      ours.update(figures)
    our_runs.append(ours)
    print(f"round {round_ + 1}: keras-tf {keras_runs[-1]}\n         fmnist_jax {ours}",
          flush=True)
  rows = []
  for key in sorted(keras_runs[0]):
    keras_median = statistics.median(run[key] for run in keras_runs)
    our_median = statistics.median(run[key] for run in our_runs)
    rows.append({"step": key[0], "batch_size": key[1], "keras_tf": keras_median,
                 "fmnist_jax": our_median, "ratio": our_median / keras_median,
                 "keras_tf_rounds": [run[key] for run in keras_runs],
                 "fmnist_jax_rounds": [run[key] for run in our_runs]})
  result = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rounds": args.rounds,
            "cpu_count": os.cpu_count(), "versions": report["versions"] if report else {},
            "results": rows}
  path = pathlib.Path(args.json)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1) + "\n")
  lines = ["| step | batch | Keras-TF images/s | fmnist_jax images/s | ratio |",
           "| --- | --- | --- | --- | --- |"]
  lines += [f"| {r['step']} | {r['batch_size']} | {r['keras_tf']:,.0f} | {r['fmnist_jax']:,.0f} "
            f"| {r['ratio']:.2f}x |" for r in rows]
  path.with_suffix(".md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
