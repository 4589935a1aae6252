"""PBT against the same population without exploits (a sweep), at equal compute:
`python -m benchmarks.pbt`.

For each population seed (run.seed), two runs of the same members (default: learning rates
3e-4..1e-2 x two dropout settings, 8 members, configs/speedrun.py's recipe without its stop at
93%): one with `pbt.every_epochs=EVERY`, one without. Each arm's best member by validation
and its test accuracy there (as the config evaluates: the speedrun's flip-averaged), the
ensemble of its members at the last epoch, its training seconds, and the exploit's own cost:
the exploit program timed alone on the population's state, and train calls on a state exploited
before each call against calls on one never exploited, interleaved in one process (the runs'
own seconds come from separate processes, one after another).

  python -m benchmarks.pbt --json benchmarks/results/pbt_cpu_epyc.json \
      --workdir-root runs/pbt --epochs 15 --seeds 0 1
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time

from benchmarks import common

MEMBERS = (("optimizer.learning_rate", (3e-4, 1e-3, 3e-3, 1e-2)),
           ("model.dropout_rates", ((0.1, 0.2, 0.1), (0.3, 0.4, 0.3))))


def _arm(args, overrides, seed: int, every: int) -> dict:
  from fmnist_jax import report as report_lib
  name = f"{'pbt' if every else 'sweep'}_s{seed}"
  workdir = pathlib.Path(args.workdir_root) / name
  run = common.run(args.config, workdir, [*overrides, f"--config.run.seed={seed}",
                                          f"--config.pbt.every_epochs={every}"])
  best = run["population"]["best_member"]
  row = next(r for r in run["rows"] if r.get("member") == best["member"]
             and r["val_accuracy"] == best["val_accuracy"])
  if not (workdir / "report" / "metrics.json").exists():
    report_lib.write_report(str(workdir))
  numbers = json.loads((workdir / "report" / "metrics.json").read_text())
  ensemble = numbers["groups"]["ensemble of the members"]["last"]
  return {"arm": name, "seed": seed, "every_epochs": every, "best_member": best["member"],
          "best_val_accuracy": best["val_accuracy"], "best_test_accuracy": row["test_accuracy"],
          "best_epoch": row["epoch"], "schedule": best["schedule"],
          "ensemble_test_accuracy": ensemble["accuracy"],
          "train_seconds": run["train_seconds"], "training_seconds": run["training_seconds"],
          "exploits": sum("parent" in r for r in run["rows"])}


def _exploit_cost(config_path: str, overrides, every: int, repeats: int = 10) -> dict:
  """Seconds of one exploit on the population's state and of one train call (10 steps), each
  the median of `repeats`, timed alone in this process on synthetic batches."""
  import jax
  import numpy as np
  from fmnist_jax import config_file, input_pipeline, pbt, population, steps
  from fmnist_jax.parallel import Parallelism
  config = config_file.load_with_overrides(config_path, [*overrides,
                                                         f"--config.pbt.every_epochs={every}"])
  found = population.members(config)
  par = Parallelism("jit", member_shards=1)
  state = par.place_state(population.initial_state(config, found, 100, 1000))
  exploit = pbt.exploiter(config, found, 100)
  images = np.random.default_rng(0).integers(0, 256, (4096, 28, 28, 1), np.uint8)
  labels = np.random.default_rng(1).integers(0, 10, 4096).astype(np.int32)
  data = input_pipeline.DeviceTrainData(images, labels, par, config.run.batch_size,
                                        tuple(population.values(config, found, "run.seed")))
  options = population.step_options(config, found, steps.StepOptions.from_config(
      config, par.num_devices, par.devices[0].platform))
  train_fn = par.compile_train(functools.partial(population.train_call, options=options),
                               batch_axis=2, num_extra=2)
  batch = data.gather(data.data, data.epoch_order(0, 10), 0, 10)
  sums = par.place_state(steps.zero_metrics(len(found)))

  def seconds(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start
  # Two states, one never exploited (a sweep's) and one exploited before each of its calls:
  # their train calls alternate, so that both see the same machine.
  holder = {"sweep": state, "pbt": jax.tree.map(lambda x: x.copy(), state)}

  def call(name):
    holder[name], out = train_fn(holder[name], batch, sums, np.int32(10))
    return out

  def exploit_now():
    holder["pbt"] = exploit(holder["pbt"])
    return holder["pbt"].step
  times = {"exploit": [], "sweep": [], "pbt": []}
  for _ in range(repeats + 1):  # (the first: compilation)
    times["exploit"].append(seconds(exploit_now))
    for name in ("sweep", "pbt"):
      times[name].append(seconds(lambda name=name: call(name)))
  median = {name: float(np.median(values[1:])) for name, values in times.items()}
  return {"exploit_seconds": median["exploit"], "train_call_seconds": median["sweep"],
          "train_call_seconds_after_exploits": median["pbt"],
          "step_rate_pbt_over_sweep": median["sweep"] / median["pbt"], "steps_per_call": 10,
          "repeats": repeats}


def _markdown(report: dict) -> str:
  rows = [[a["arm"], a["best_member"], f"{100 * a['best_val_accuracy']:.2f}%",
           f"{100 * a['best_test_accuracy']:.2f}%", f"{100 * a['ensemble_test_accuracy']:.2f}%",
           a["exploits"], f"{a['training_seconds']:.0f}"] for a in report["arms"]]
  cost = report["exploit_cost"]
  return "\n".join([
      common.machine_line(report), "", f"`{report['config']}` {' '.join(report['overrides'])}",
      "", *common.table(["arm", "best member", "its val", "its test", "ensemble test",
                         "members replaced", "training s"], rows), "",
      f"one exploit {1e3 * cost['exploit_seconds']:.1f} ms vs a train call of "
      f"{cost['steps_per_call']} steps {1e3 * cost['train_call_seconds']:.1f} ms; train calls "
      f"on an exploited state, interleaved: {cost['step_rate_pbt_over_sweep']:.3f}x the "
      "step rate"])


def main(argv=None):
  parser = common.parser(__doc__, "configs/speedrun.py", seeds=(0, 1), workdir_root=True)
  parser.add_argument("--epochs", type=int, default=15)
  parser.add_argument("--every", type=int, default=2, help="pbt.every_epochs of the PBT arm")
  args, extra = common.parse(parser, argv)
  if args.epochs < 1 or args.every < 1:
    parser.error("--epochs and --every must be at least 1")
  overrides = [f"--config.population.members={MEMBERS!r}",
               f"--config.run.num_epochs={args.epochs}", "--config.eval.stop_at_accuracy=0.0",
               *extra]
  common.check_arm(parser, args.config, [*overrides, f"--config.pbt.every_epochs={args.every}"])
  report = {**common.machine(), "config": args.config, "overrides": overrides,
            "epochs": args.epochs, "every_epochs": args.every}
  report["arms"] = [_arm(args, overrides, seed, every) for seed in args.seeds
                    for every in (args.every, 0)]
  report["summary"] = {
      kind: {key: common.mean_std([a[key] for a in report["arms"] if (a["every_epochs"] > 0)
                                   == (kind == "pbt")])
             for key in ("best_test_accuracy", "best_val_accuracy", "ensemble_test_accuracy",
                         "train_seconds")} for kind in ("pbt", "sweep")}
  report["exploit_cost"] = _exploit_cost(args.config, overrides, args.every)
  common.write(args.json, report, _markdown(report))
  return report


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
