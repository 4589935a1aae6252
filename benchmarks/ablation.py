"""The recipe ablation (airbench's table for this network): epochs to a validation accuracy as
each option is added in turn, mean +- std over seeds.

Row k of the config module's ABLATION trains the config with the fields of rows 0..k as one
population of the seeds (fmnist_jax.population: one process, one program), for `--epochs`
epochs, evaluating val and test after every epoch with flip averaging, every epoch's
checkpoint kept. Per seed it reports the first epoch whose flip-averaged validation accuracy
reaches `--target`, and, from the kept checkpoints, the same with the translations of
test-time augmentation added (eval.tta_translate=1; also the last epoch's test accuracy): that
row needs no training of its own.
Decisions are made on validation; test accuracy is reported beside it, never chosen on.

  python -m benchmarks.ablation --config configs/speedrun.py --seeds 0 1 2 3 4 --epochs 10 \
      --workdir-root runs/ablation --json benchmarks/results/ablation_cpu_xeon.json

Finished rows are reused (common.run), so a cut sweep continues where it stopped. Extra
`--config.field=value` arguments go to every row.
"""

from __future__ import annotations

import importlib
import pathlib

import numpy as np

from benchmarks import common


def cumulative_rows(config: str, names=None) -> list[tuple[str, dict]]:
  """[(row name, every field of that row and the rows above)] from the config's ABLATION."""
  module = importlib.import_module(pathlib.Path(config.split(":")[0]).with_suffix("")
                                   .as_posix().replace("/", "."))
  rows, fields = [], {}
  for name, changes in module.ABLATION:
    fields = {**fields, **changes}
    rows.append((name, dict(fields)))
  return [row for row in rows if not names or row[0] in names]


def row_overrides(fields: dict, seeds, epochs: int) -> list[str]:
  seeds = ", ".join(str(seed) for seed in seeds)
  return [f"--config.{key}={value}" for key, value in fields.items()] + [
      f"--config.run.num_epochs={epochs}",
      f"--config.population.members=(('run.seed', ({seeds},)),)",
      "--config.eval.stop_at_accuracy=0", "--config.eval.tta_flip=True",
      "--config.checkpoints.every_seconds=0", f"--config.checkpoints.keep={epochs + 1}"]


def first_epoch(accuracies, target: float):
  """The first epoch (1-based) whose accuracy reaches the target, or None."""
  return next((i + 1 for i, a in enumerate(accuracies) if a >= target), None)


def translated(workdir: pathlib.Path, steps: list[int], split: str = "val") -> np.ndarray:
  """Flip- and translation-averaged accuracy [steps, members] of each step's checkpoint."""
  from fmnist_jax import evaluate, input_pipeline, population
  from fmnist_jax import workdir as workdir_lib
  config = workdir_lib.read_config(workdir)
  config.eval.tta_translate = 1
  images, labels = input_pipeline.load_splits(config)[split]
  members = len(population.members(config))
  return np.array([(evaluate.member_predictions(workdir, config, [step] * members, images)
                    .argmax(-1) == labels).mean(-1) for step in steps])


def measure_row(args, name: str, fields: dict, overrides: list[str]) -> dict:
  workdir = pathlib.Path(args.workdir_root) / name
  run = common.run(args.config, workdir, [*row_overrides(fields, args.seeds, args.epochs),
                                          *overrides])
  steps = sorted({r["step"] for r in run["rows"]})
  val, test = translated(workdir, steps), translated(workdir, steps[-1:], "test")[0]
  members = []
  for index, seed in enumerate(args.seeds):
    rows = sorted((r for r in run["rows"] if r["member"] == index), key=lambda r: r["step"])
    members.append({
        "seed": seed, "val_accuracy_by_epoch": [r["val_accuracy"] for r in rows],
        "val_accuracy_translated_by_epoch": val[:, index].tolist(),
        "test_accuracy_by_epoch": [r["test_accuracy"] for r in rows],
        "final_test_accuracy_translated": float(test[index]),
        "epochs_to_target": first_epoch([r["val_accuracy"] for r in rows], args.target),
        "epochs_to_target_translated": first_epoch(val[:, index], args.target)})
  return {"name": name, "fields": fields, "members": members,
          "train_seconds": run["training_seconds"], "process_seconds": run["process_seconds"],
          "summary": summarize(members)}


def summarize(members: list[dict]) -> dict:
  out = {}
  for tag, key in (("", "val_accuracy_by_epoch"), ("_translated",
                                                    "val_accuracy_translated_by_epoch")):
    epochs = [m[f"epochs_to_target{tag}"] for m in members]
    out[f"epochs{tag}"] = common.mean_std(epochs)
    out[f"reached{tag}"] = sum(e is not None for e in epochs)
    out[f"final_val{tag}"] = common.mean_std([m[key][-1] for m in members])
  out["final_test"] = common.mean_std([m["test_accuracy_by_epoch"][-1] for m in members])
  out["final_test_translated"] = common.mean_std([m["final_test_accuracy_translated"]
                                                  for m in members])
  return out


def _markdown(report: dict) -> str:
  pm = common.pm
  seeds, epochs = len(report["seeds"]), report["epochs"]
  rows = []
  for row in report["rows"]:
    s = row["summary"]
    added = ", ".join(f"{k}={v}" for k, v in row["fields"].items()) or "CHOSEN"
    rows.append([f"{row['name']} ({added})", pm(s["epochs"], digits=1),
                 f"{s['reached']}/{seeds}", pm(s["epochs_translated"], digits=1),
                 f"{s['reached_translated']}/{seeds}",
                 *(f"{pm(s[key], 100, 2)}%" for key in (
                     "final_val", "final_val_translated", "final_test",
                     "final_test_translated"))])
  return "\n".join([common.machine_line(report), "",
                    f"`{report['config']}`, {epochs} epochs, {seeds} seeds; target "
                    f"{report['target']:.1%} val", "", *common.table(
                        ["row (adds)", "epochs to target, flip TTA", "seeds",
                         "epochs, flip+translate TTA", "seeds", "final val, flip",
                         "final val, flip+translate", "final test, flip",
                         "final test, flip+translate"], rows)])


def main(argv=None):
  parser = common.parser(__doc__, "configs/speedrun.py", seeds=range(5), workdir_root=True)
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--target", type=float, default=0.93)
  parser.add_argument("--rows", nargs="+", help="only these rows of ABLATION (default: all)")
  args, overrides = common.parse(parser, argv)
  rows = cumulative_rows(args.config, args.rows)
  if not rows:
    parser.error(f"--rows {' '.join(args.rows)}: no such rows in {args.config}'s ABLATION")
  report = {**common.machine(), "config": args.config, "overrides": overrides,
            "seeds": args.seeds, "epochs": args.epochs, "target": args.target, "rows": []}
  for name, fields in rows:
    report["rows"].append(measure_row(args, name, fields, overrides))
    common.write(args.json, report, _markdown(report))  # after each: a cut sweep keeps some
  return report


if __name__ == "__main__":
  main()
