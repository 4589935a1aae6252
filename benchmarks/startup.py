"""Seconds from process start to the first train call, and to the answer of a command that
trains nothing: `python -m benchmarks.startup`.

    python -m benchmarks.startup --json benchmarks/results/startup_cpu.json [--runs 5]
        [--config configs/default.py]

In fresh caches (a temporary compilation cache and data cache, so nothing measured depends on
earlier runs): one cold start, then `--runs` warm ones, each `python -m fmnist_jax.main` in a
new process training `--steps` steps into a new workdir; their result.json's startup_seconds
(imports, data, state, compile, first_call: fmnist_jax.progress.Startup) and the processes'
wall time. Then the wall time of commands that train nothing: a rerun of a finished run
(report off), and three command-line mistakes refused before JAX starts.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import common


def _parse_args(argv):
  parser = common.parser(__doc__)
  parser.add_argument("--runs", type=int, default=5, help="warm starts measured")
  parser.add_argument("--steps", type=int, default=20, help="steps each start trains")
  parser.add_argument("--repeats", type=int, default=3,
                      help="times each command that trains nothing is timed (their median)")
  args, _ = common.parse(parser, argv, overrides=False)
  if min(args.runs, args.steps, args.repeats) < 1:
    parser.error("--runs, --steps and --repeats must be positive")
  return args


def _timed(command, env) -> tuple[float, subprocess.CompletedProcess]:
  start = time.perf_counter()
  done = subprocess.run(command, env=env, capture_output=True, text=True)
  return time.perf_counter() - start, done


def _start(config, workdir, steps, env) -> dict:
  """One training process; its start-up phases and wall time."""
  seconds, done = _timed([sys.executable, "-m", "fmnist_jax.main", f"--config={config}",
                          f"--workdir={workdir}", f"--config.run.num_train_steps={steps}",
                          "--config.logging.write_report=False"], env)
  if done.returncode:
    sys.exit(f"error: the run in {workdir} failed:\n{done.stderr[-2000:]}")
  result = json.loads((pathlib.Path(workdir) / "result.json").read_text())
  return {**result["startup_seconds"], "process_seconds": round(seconds, 3)}


def _refusals(config, scratch: pathlib.Path, env, repeats: int) -> dict:
  """Wall seconds of commands that must answer without training."""
  (scratch / "a_file").write_text("not a workdir")
  main = [sys.executable, "-m", "fmnist_jax.main"]
  commands = {
      "rerun of a finished run": [*main, f"--config={config}", f"--workdir={scratch / 'w0'}",
                                  "--config.run.num_train_steps=1",
                                  "--config.logging.write_report=False"],
      "workdir is a file": [*main, f"--config={config}", f"--workdir={scratch / 'a_file'}"],
      "missing config file": [*main, "--config=configs/missing.py", f"--workdir={scratch}/x"],
      "field without config. prefix": [*main, f"--config={config}", f"--workdir={scratch}/x",
                                       "--batch_size=64"],
  }
  seconds = {}
  for name, command in commands.items():
    times = [_timed(command, env)[0] for _ in range(repeats)]
    seconds[name] = round(statistics.median(times), 3)
  return seconds


def main(argv=None):
  args = _parse_args(argv)
  report = {**common.machine(), "config": args.config, "steps": args.steps}
  with tempfile.TemporaryDirectory(prefix="fmnist_jax_startup_") as scratch:
    scratch = pathlib.Path(scratch)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(scratch / "xla"),
           "FMNIST_JAX_DATA_CACHE_DIR": str(scratch / "data"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cold = _start(args.config, scratch / "cold", args.steps, env)
    warm = [_start(args.config, scratch / f"w{i}", args.steps, env) for i in range(args.runs)]
    refusals = _refusals(args.config, scratch, env, args.repeats)
  phases = list(warm[0])
  median = {k: round(statistics.median(run[k] for run in warm), 3) for k in phases}
  report.update(cold=cold, warm=warm, warm_median=median, refusals=refusals)
  lines = [common.machine_line(report), "", *common.table(
      ["start", *phases], [["cold", *(f"{cold[k]:.2f}" for k in phases)],
                           [f"warm (median of {args.runs})",
                            *(f"{median[k]:.2f}" for k in phases)]]), "",
      *common.table(["command that trains nothing", "seconds"],
                    [[name, f"{seconds:.2f}"] for name, seconds in refusals.items()])]
  common.write(args.json, report, "\n".join(lines))


if __name__ == "__main__":
  main()
