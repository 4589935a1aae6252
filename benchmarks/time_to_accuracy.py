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
import pathlib
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

  from benchmarks import common
  from fmnist_jax import workdir as workdir_lib
  start = time.time()
  process_seconds = common.run_main(
      args.config, workdir, [f"--config.stop_at_accuracy={args.target}",
                             "--config.stop_metric=test_accuracy", *overrides],
      log_path=pathlib.Path(args.json).with_suffix(".log"))
  result = workdir_lib.read_result(workdir)
  reached = result["stop_reason"] == "target_reached"
  final = result["final"]
  setup_seconds = result["end_unix_time"] - start - result["train_seconds"]
  rows = workdir_lib.read_metrics(workdir, required=True)
  info = workdir_lib.read_run_info(workdir)[0]
  machine = common.machine()
  report = {
      "config": args.config, "overrides": overrides, "target_test_accuracy": args.target,
      "reached": reached,
      "seconds_to_target": result["end_unix_time"] - start if reached else None,
      "epochs_to_target": final["epoch"] if reached else None,
      "compile_seconds": result["compile_seconds"],
      "setup_seconds": setup_seconds,  # imports, data loading, state creation, restore
      "process_seconds": process_seconds,
      "best_test_accuracy": max(r["test_accuracy"] for r in rows),
      **machine, "platform": info.get("platform"), "device_kind": info.get("device_kind"),
      "device_count": info.get("device_count"), "evaluations": rows,
  }
  line = (f"{args.config}: test accuracy {args.target:.2%} "
          + (f"reached after {report['seconds_to_target']:.0f} s (epoch "
             f"{report['epochs_to_target']:.0f}; compile {report['compile_seconds']:.1f} s, "
             f"setup {setup_seconds:.1f} s)" if reached else
             f"not reached (best {report['best_test_accuracy']:.2%} in "
             f"{process_seconds:.0f} s)"))
  common.write(args.json, report, line)
  print(line)
  return report


if __name__ == "__main__":
  main()
