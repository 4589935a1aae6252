"""Wall-clock seconds from process start to a test accuracy, through the real entry point.

Starts `python -m fmnist_jax.main` with `stop_at_accuracy` on `test_accuracy` (evaluated after
every epoch, as MLPerf-style time-to-accuracy does), and measures from just before the process
starts to the evaluation that reaches the target. Compile time (tracing, lowering, XLA) comes
from the run's result.json and is shown separately; it is included in the total.

  python -m benchmarks.time_to_accuracy --config configs/best.py --target 0.93 \
      --workdir runs/tta --json benchmarks/results/time_to_accuracy_cpu.json

Extra `--config.field=value` arguments go to the run. The workdir must be new or empty (a
resumed run would not measure anything).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/best.py")
  parser.add_argument("--target", type=float, default=0.93)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--json", required=True)
  args, overrides = parser.parse_known_args(argv)
  workdir = pathlib.Path(args.workdir)
  if workdir.exists() and any(workdir.iterdir()):
    sys.exit(f"error: {workdir} is not empty; time-to-accuracy needs a fresh run.")

  command = [sys.executable, "-m", "fmnist_jax.main", f"--config={args.config}",
             f"--workdir={workdir}", f"--config.stop_at_accuracy={args.target}",
             "--config.stop_metric=test_accuracy", "--config.write_report=False", *overrides]
  print(" ".join(command), flush=True)
  start = time.time()
  subprocess.run(command, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                 stderr=subprocess.DEVNULL)
  process_seconds = time.time() - start
  result = json.loads((workdir / "result.json").read_text())
  reached = result["stop_reason"] == "target_reached"
  final = result["final"]
  setup_seconds = result["end_unix_time"] - start - result["train_seconds"]

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from fmnist_jax import evaluate, run_info
  rows = evaluate.load_metrics(workdir)
  info = json.loads((workdir / "run_info.jsonl").read_text().splitlines()[0])
  report = {
      "config": args.config, "overrides": overrides, "target_test_accuracy": args.target,
      "reached": reached,
      "seconds_to_target": result["end_unix_time"] - start if reached else None,
      "epochs_to_target": final["epoch"] if reached else None,
      "compile_seconds": result["compile_seconds"],
      "setup_seconds": setup_seconds,  # imports, data loading, state creation, restore
      "process_seconds": process_seconds,
      "best_test_accuracy": max(r["test_accuracy"] for r in rows),
      "platform": info.get("platform"), "device_kind": info.get("device_kind"),
      "device_count": info.get("device_count"), "processor": run_info.host_cpu(),
      "cpu_count": os.cpu_count(), "versions": run_info.package_versions(),
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "evaluations": rows,
  }
  json_path = pathlib.Path(args.json)
  json_path.parent.mkdir(parents=True, exist_ok=True)
  json_path.write_text(json.dumps(report, indent=1) + "\n")
  line = (f"{args.config}: test accuracy {args.target:.2%} "
          + (f"reached after {report['seconds_to_target']:.0f} s (epoch "
             f"{report['epochs_to_target']:.0f}; compile {report['compile_seconds']:.1f} s, "
             f"setup {setup_seconds:.1f} s)" if reached else
             f"not reached (best {report['best_test_accuracy']:.2%} in "
             f"{process_seconds:.0f} s)"))
  json_path.with_suffix(".md").write_text(line + "\n")
  print(line)
  return report


if __name__ == "__main__":
  main()
