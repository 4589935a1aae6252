"""Seconds to a test accuracy, per seed and as mean +- std, with a cold and a warm compile cache.

Each run is `python -m fmnist_jax.main` with `eval.stop_at_accuracy` on `test_accuracy` (evaluated
after every epoch). Two clocks per run:

- training seconds: from the start of the training loop to the evaluation that reaches the
  target, that evaluation included and compilation excluded (the airbench convention);
- process seconds: from just before the process starts to that evaluation (imports, data
  loading, compilation and training).

`--caches cold warm`: cold runs each start with an empty JAX compilation cache; warm runs
share one that a first run ("prime", recorded apart from the summary) filled. `--population`:
the seeds train as one population (fmnist_jax.population) in one process per cache, each member
stopping at the target; its epochs are per seed, its seconds those of all seeds together. One
JSON per platform:

  python -m benchmarks.time_to_accuracy --config configs/speedrun.py --target 0.93 \
      --seeds 0 1 2 3 4 --json benchmarks/results/time_to_accuracy_gpu.json

Extra `--config.field=value` arguments go to every run.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

from benchmarks import common


def one_run(args, overrides, seed: int, cache_dir: str, root: pathlib.Path, tag: str) -> dict:
  """One seed through main (common.run's clocks); its evaluations."""
  run = common.run(args.config, root / f"{tag}_seed{seed}",
                   [f"--config.eval.stop_at_accuracy={args.target}",
                    "--config.eval.stop_metric=test_accuracy", f"--config.run.seed={seed}",
                    *overrides],
                   env={"JAX_COMPILATION_CACHE_DIR": cache_dir})
  reached, last = run["stop_reason"] == "target_reached", run["rows"][-1]
  return {"seed": seed, "cache": tag, "reached": reached, "epochs": last["epoch"],
          "test_accuracy": last["test_accuracy"], "train_seconds": run["training_seconds"],
          "process_seconds_to_target": run["process_seconds_to_end"] if reached else None,
          "process_seconds": run["process_seconds"], "compile_seconds": run["compile_seconds"],
          "compilations": run.get("compilations"),
          "test_accuracy_by_epoch": [r["test_accuracy"] for r in run["rows"]]}


def population_run(args, overrides, cache_dir: str, root: pathlib.Path, tag: str) -> dict:
  """All seeds as one population: per seed, the first evaluation at the target."""
  seeds = ", ".join(str(seed) for seed in args.seeds)
  run = common.run(args.config, root / f"{tag}_population",
                   [f"--config.eval.stop_at_accuracy={args.target}",
                    "--config.eval.stop_metric=test_accuracy",
                    f"--config.population.members=(('run.seed', ({seeds},)),)", *overrides],
                   env={"JAX_COMPILATION_CACHE_DIR": cache_dir})
  members = []
  for index, seed in enumerate(args.seeds):
    rows = [r for r in run["rows"] if r["member"] == index]
    first = next((r for r in rows if r["test_accuracy"] >= args.target), None)
    members.append({"seed": seed, "reached": first is not None,
                    "epochs": (first or rows[-1])["epoch"],
                    "test_accuracy_by_epoch": [r["test_accuracy"] for r in rows]})
  return {"cache": tag, "population": True, "members": members,
          "reached": run["stop_reason"] == "target_reached",
          "train_seconds": run["training_seconds"],
          "process_seconds_to_target": run["process_seconds_to_end"],
          "process_seconds": run["process_seconds"], "compile_seconds": run["compile_seconds"]}


def summarize_population(run: dict) -> dict:
  reached = [m for m in run["members"] if m["reached"]]
  return {"runs": len(run["members"]), "reached": len(reached), "population": True,
          "train_seconds": [run["train_seconds"], 0.0],
          "process_seconds": [run["process_seconds_to_target"], 0.0],
          "compile_seconds": [run["compile_seconds"], 0.0],
          "epochs": common.mean_std([m["epochs"] for m in reached])}


def summarize(runs: list[dict]) -> dict:
  reached = [r for r in runs if r["reached"]]
  return {"runs": len(runs), "reached": len(reached),
          "train_seconds": common.mean_std([r["train_seconds"] for r in reached]),
          "process_seconds": common.mean_std([r["process_seconds_to_target"] for r in reached]),
          "compile_seconds": common.mean_std([r["compile_seconds"] for r in runs]),
          "epochs": common.mean_std([r["epochs"] for r in reached])}


def _markdown(report: dict) -> str:
  def pm(value, digits=1):
    return common.pm(value, digits=digits)
  rows = [[f"{tag}, one population (seconds: all seeds)" if s.get("population") else tag,
           f"{s['reached']}/{s['runs']}", pm(s["train_seconds"], 2), pm(s["process_seconds"]),
           pm(s["compile_seconds"]), pm(s["epochs"])] for tag, s in report["summary"].items()]
  return "\n".join([common.machine_line(report), "",
                    f"`{report['config']}` {' '.join(report['overrides'])}: test accuracy "
                    f">= {report['target']:.2%}", "", *common.table(
                        ["cache", "seeds reaching it", "training s", "process s", "compile s",
                         "epochs"], rows)])


def main(argv=None):
  parser = common.parser(__doc__, "configs/speedrun.py", seeds=range(5))
  parser.add_argument("--target", type=float, default=0.93)
  parser.add_argument("--caches", nargs="+", choices=("cold", "warm"), default=["cold", "warm"])
  parser.add_argument("--population", action="store_true",
                      help="train the seeds as one population (one process per cache)")
  args, overrides = common.parse(parser, argv)
  if not 0 < args.target <= 1:
    parser.error(f"--target {args.target}: an accuracy in (0, 1], e.g. 0.93")
  report = {**common.machine(), "config": args.config, "overrides": overrides,
            "target": args.target, "seeds": args.seeds, "runs": [], "summary": {}}
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    for tag in args.caches:
      shared = tempfile.mkdtemp(dir=tmp)
      if tag == "warm":  # fills the shared cache: a cold run, kept apart from the summary
        report["runs"].append(population_run(args, overrides, shared, root, "prime")
                              if args.population else
                              one_run(args, overrides, args.seeds[0], shared, root, "prime"))
      if args.population:
        run = population_run(args, overrides, shared, root, tag)
        report["runs"].append(run)
        report["summary"][tag] = summarize_population(run)
      else:
        runs = [one_run(args, overrides, seed, shared if tag == "warm" else
                        tempfile.mkdtemp(dir=tmp), root, tag) for seed in args.seeds]
        report["runs"] += runs
        report["summary"][tag] = summarize(runs)
      common.write(args.json, report, _markdown(report))  # after each: a cut run keeps some
  return report


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
