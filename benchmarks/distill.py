"""Distilled students against plain runs, and the teacher's cost: `python -m benchmarks.distill`.

First the step's cost, timed alone in this process on the same batches, three ways
interleaved: plain, with the teacher's predictions precomputed, and with its forward passes on
the fly (every teacher member on each augmented batch). Then two arms of the same recipe,
epochs and seeds, each one population of students (the seeds its members, in one program):
"distilled_MODE" learns from `--teacher` (a finished workdir: its members' ensemble,
fmnist_jax.distill) with the config's distill settings (MODE: distill.teacher_sees, so that
both ways share one --workdir-root and its plain arm), "plain" has no teacher. Each member's
test accuracy at the end, single view and flip-averaged (the image and its mirror image), the
arm's mean ± std, and the students' agreement with the teacher.

  python -m benchmarks.distill --config configs/distill.py --teacher runs/distill/teacher \
      --json benchmarks/results/distill_cpu_epyc.json --workdir-root runs/distill --seeds 0 1 2
"""

from __future__ import annotations

import functools
import os
import pathlib
import time

from benchmarks import common

# The distill section's fields but the teacher: inert without one, so the plain arm leaves the
# overrides of them out (one plain run serves both ways of seeing the teacher).
DISTILL_FIELDS = ("distill.temperature", "distill.weight", "distill.teacher_sees")


def _accuracies(workdir: pathlib.Path, flip: bool) -> list[float]:
  """Each member's test accuracy at its last checkpoint, single view or flip-averaged (the
  image and its mirror image), whatever the run's own evaluation was."""
  import numpy as np
  from fmnist_jax import evaluate, input_pipeline, population, workdir as workdir_lib
  config = workdir_lib.read_config(workdir)
  config.eval.tta_flip, config.eval.tta_translate = flip, 0
  found = population.members(config)
  images, labels = input_pipeline.load_splits(config)["test"]
  chosen = evaluate.member_steps(workdir, workdir_lib.read_metrics(workdir), len(found), "last")
  predicted = evaluate.member_predictions(workdir, config, chosen, images)
  return [float(np.mean(p.argmax(-1) == labels)) for p in predicted]


def _arm(args, name: str, overrides: list[str]) -> dict:
  workdir = pathlib.Path(args.workdir_root) / name
  run = common.run(args.config, workdir, overrides)
  single, flipped = _accuracies(workdir, flip=False), _accuracies(workdir, flip=True)
  return {"arm": name, "workdir": str(workdir), "test_accuracy": single,
          "test_accuracy_flip": flipped, "summary": {
              "test_accuracy": common.mean_std(single),
              "test_accuracy_flip": common.mean_std(flipped)},
          "distill": run.get("distill"), "training_seconds": run["training_seconds"]}


def _step_cost(config_path: str, overrides, repeats: int = 5, steps: int = 10) -> dict:
  """Seconds per train call of `steps` steps of the students, the median of `repeats` of each
  arm, the arms interleaved in this process, on the training images' first batches."""
  import jax
  import numpy as np
  from fmnist_jax import config_file, distill, input_pipeline, population, steps as steps_lib
  from fmnist_jax.parallel import Parallelism
  config = config_file.load_with_overrides(config_path, overrides)
  found = population.members(config)
  teacher = distill.check(config)
  par = Parallelism("jit", member_shards=1)
  images, labels = input_pipeline.load_splits(config)["train"]
  images, labels = images[:8192], labels[:8192]
  base = population.step_options(config, found, steps_lib.StepOptions.from_config(
      config, par.num_devices, par.devices[0].platform))
  calls, state = {}, population.initial_state(config, found, 100, 1000)
  for mode in ("plain", *distill.MODES):
    config.distill.teacher_sees = mode if mode != "plain" else "precomputed"
    mine = teacher if mode != "plain" else None
    options = distill.step_options(config, mine, base)
    data = input_pipeline.DeviceTrainData(
        images, labels, par, config.run.batch_size,
        tuple(population.values(config, found, "run.seed")),
        extra=distill.train_targets(config, mine, images))
    train_fn = par.compile_train(functools.partial(population.train_call, options=options),
                                 batch_axis=2, num_extra=3)
    calls[mode] = (train_fn, data.gather(data.data, data.epoch_order(0, steps), 0, steps),
                   par.replicate(teacher.params) if options.teacher else None,
                   par.place_state(state))
  sums = par.place_state(steps_lib.zero_metrics(len(found)))
  times = {mode: [] for mode in calls}
  for _ in range(repeats + 1):  # (the first: compilation)
    for mode, (train_fn, batch, teacher_params, mine) in calls.items():
      start = time.perf_counter()
      mine, _ = jax.block_until_ready(train_fn(mine, batch, sums, np.int32(steps),
                                               teacher_params))
      times[mode].append(time.perf_counter() - start)
      calls[mode] = (train_fn, batch, teacher_params, mine)
  median = {mode: float(np.median(values[1:])) for mode, values in times.items()}
  return {"call_seconds": median, "steps_per_call": steps, "repeats": repeats,
          "students": len(found), "teacher_members": len(teacher.members),
          "images_per_second": {mode: steps * config.run.batch_size * len(found) / seconds
                                for mode, seconds in median.items()}}


def _markdown(report: dict) -> str:
  rows = [[a["arm"], common.pm(a["summary"]["test_accuracy"], 100),
           common.pm(a["summary"]["test_accuracy_flip"], 100),
           common.pm((a["distill"] or {}).get("test_agreement"), 100),
           f"{a['training_seconds']:.0f}"] for a in report["arms"]]
  cost = report["step_cost"]
  speeds = ", ".join(f"{mode} {rate:,.0f} img/s" for mode, rate
                     in cost["images_per_second"].items())
  return "\n".join([common.machine_line(report), "", f"`{report['config']}` "
                    f"{' '.join(report['overrides'])}; teacher {report['teacher']}", "",
                    *common.table(["arm", "test (single view)", "test (flip-averaged)",
                                   "agreement with the teacher", "training s"], rows), "",
                    f"the students' step ({cost['students']} students, "
                    f"{cost['teacher_members']} teacher members): {speeds}"])


def main(argv=None):
  from fmnist_jax import config_file
  parser = common.parser(__doc__, "configs/distill.py", seeds=(0, 1, 2), workdir_root=True)
  parser.add_argument("--teacher", required=True, type=os.path.expanduser,
                      help="a finished run's workdir (fmnist_jax.distill)")
  args, extra = parser.parse_known_args(argv)
  common.checked_json(parser, args.json)
  teacher = f"--config.distill.teacher={args.teacher}"  # (the config's own may not exist yet)
  extra = common.checked_overrides(parser, args.config, [*extra, teacher])[:-1]
  overrides = [f"--config.population.members={(('run.seed', tuple(args.seeds)),)!r}", *extra]
  taught = [*overrides, teacher]
  common.check_arm(parser, args.config, taught)
  report = {**common.machine(), "config": args.config, "overrides": overrides,
            "teacher": args.teacher, "seeds": args.seeds}
  report["step_cost"] = _step_cost(args.config, taught)
  sees = config_file.load_with_overrides(args.config, taught).distill.teacher_sees
  report["arms"] = [_arm(args, f"distilled_{sees}", taught),
                    _arm(args, "plain", [*common.without(overrides, DISTILL_FIELDS),
                                         "--config.distill.teacher="])]
  common.write(args.json, report, _markdown(report))
  return report


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
