"""A population against one model, end to end, in one sitting:
`python -m benchmarks.population_study`.

Runs the population config (default configs/dropout_study.py: 10 members) and, in the same
sitting, one model of it (the same config with `population.members=()`, i.e.
configs/default.py for the dropout study), each through `python -m fmnist_jax.main`; records
both processes' seconds and their ratio, then writes the population's report (not timed) and
keeps its numbers: each setting's mean +- std and ensemble.

  python -m benchmarks.population_study --json benchmarks/results/dropout_study_cpu_xeon.json

Extra `--config.field=value` arguments go to both runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

from benchmarks import common


def _seconds(run: dict) -> dict:
  return {key: run.get(key) for key in ("process_seconds", "training_seconds", "compile_seconds",
                                        "train_seconds")} | {"final": run["final"]}


def _markdown(report: dict) -> str:
  single, members = report["single"], report["population"]
  runs = [[name, *(f"{run[key]:.1f}" for key in ("process_seconds", "training_seconds",
                                                 "compile_seconds"))]
          for name, run in (("one model", single), (f"{members['members']} members", members))]
  settings = [[name or "all", s["members"], f"{common.pm(s['test_accuracy'], 100)}%",
               common.pm(s["test_loss"], digits=4), f"{common.pm(s['ece'], 100)}%",
               f"{common.pm(s['gap'], 100)} pt"] for name, s in report["settings"].items()]
  return "\n".join([
      common.machine_line(report), "", f"`{report['config']}` {' '.join(report['overrides'])}: "
      f"{members['members']} members in one process vs one model", "",
      *common.table(["run", "process s", "training s", "compile s"], runs), "",
      f"population / one model, process seconds: {report['ratio']:.2f}x", "",
      *common.table(["setting", "members", "test accuracy", "test loss", "ECE",
                     "train-test gap"], settings)])


def main(argv=None):
  parser = common.parser(__doc__, "configs/dropout_study.py")
  parser.add_argument("--workdir", help="keep both runs here (default: a temporary folder)")
  args, overrides = common.parse(parser, argv)
  from fmnist_jax import report as report_lib
  alone = [*common.without(overrides, ["population.members", "population.per_pass"]),
           "--config.population.members=()"]
  common.check_arm(parser, args.config, alone)
  report = {**common.machine(), "config": args.config, "overrides": overrides}
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(args.workdir or tmp)
    single = common.run(args.config, root / "single", alone)
    members = common.run(args.config, root / "population", overrides)
    report_lib.write_report(str(root / "population"))
    numbers = json.loads((root / "population" / "report" / "metrics.json").read_text())
  report.update(
      single=_seconds(single),
      population=_seconds(members) | {"members": len(numbers["members"])},
      ratio=members["process_seconds"] / single["process_seconds"],
      settings=numbers["settings"], ensembles=numbers["ensembles"], members=numbers["members"])
  common.write(args.json, report, _markdown(report))
  return report


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
