"""Training images/s through the real entry point vs the step microbenchmark, in one sitting.

Runs `python -m fmnist_jax.main` for a few epochs (input pipeline, compiled steps, progress
logging, per-epoch evaluation of 15,000 images and asynchronous checkpoints all included) and
takes images/s from the epochs after the first (which compiles), using each evaluation's
`elapsed_seconds`. Then runs benchmarks/throughput.py on the same settings and reports the ratio.

  python -m benchmarks.end_to_end --config configs/default.py --epochs 3 \
      --json benchmarks/results/end_to_end_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--json", required=True)
  args, overrides = parser.parse_known_args(argv)
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  from fmnist_jax import evaluate, train

  with tempfile.TemporaryDirectory() as tmp:
    command = [sys.executable, "-m", "fmnist_jax.main", f"--config={args.config}",
               f"--workdir={tmp}/run", f"--config.num_epochs={args.epochs}",
               "--config.write_report=False", *overrides]
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    rows = evaluate.load_metrics(pathlib.Path(tmp, "run"))
    info = json.loads(pathlib.Path(tmp, "run", "run_info.jsonl").read_text().splitlines()[0])
    steps_per_epoch = info["steps_per_epoch"]
    batch_size = json.loads(pathlib.Path(tmp, "run", "config.json").read_text())["batch_size"]
    seconds = rows[-1]["elapsed_seconds"] - rows[0]["elapsed_seconds"]
    end_to_end = (len(rows) - 1) * steps_per_epoch * batch_size / seconds

    micro_path = pathlib.Path(tmp, "micro.json")
    microbatches = train.resolve_microbatches(config, 1, "cpu")  # what main picks on 1 CPU
    subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--json", str(micro_path),
                    "--batch-sizes", str(batch_size), "--parallelism", config.parallelism,
                    "--input-modes", "device", "--steps-per-call", str(config.steps_per_call),
                    "--dtypes", config.dtype, "--conv-impls", "im2col", "--microbatches",
                    str(microbatches), "--repeats", "3"],
                   check=True, capture_output=True, text=True)
    micro = json.loads(micro_path.read_text())
  micro_train = next(r for r in micro["results"] if r["step"] == "train")["images_per_second"]
  result = {"config": args.config, "overrides": overrides, "epochs": args.epochs,
            "end_to_end_images_per_second": end_to_end,
            "microbenchmark_images_per_second": micro_train, "ratio": end_to_end / micro_train,
            "evaluations": rows, "processor": micro["processor"], "versions": micro["versions"],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_count": os.cpu_count()}
  path = pathlib.Path(args.json)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1) + "\n")
  line = (f"{' '.join([args.config, *overrides])}: {end_to_end:,.0f} images/s end to end "
          f"(epochs 2-{args.epochs}, evaluation and checkpoints included) vs "
          f"{micro_train:,.0f} in the step microbenchmark: {100 * end_to_end / micro_train:.0f}% "
          f"({micro['processor']}, {micro['cpu_count']} CPUs)")
  path.with_suffix(".md").write_text(line + "\n")
  print(line)


if __name__ == "__main__":
  main()
