"""Accuracy of a training recipe over several seeds: mean and std of test accuracy and loss.

Runs `python -m fmnist_jax.main` once per seed (each in WORKDIR_ROOT/seed<N>, its log in
seed<N>.log; common.run: a finished run is reused, so an interrupted sweep continues where it
stopped), and writes a JSON and prints a markdown table. What this benchmark adds to a run
(the evaluation both ways) goes to seed<N>.recipe.json beside the run: a run's own files are
never rewritten.

  python -m benchmarks.recipe --config configs/best.py --seeds 0 1 2 \
      --workdir-root runs/recipe/best --json benchmarks/results/recipe_best.json

Extra `--config.field=value` arguments are passed to every run (e.g. to try a variant).

Each run's last checkpoint is also evaluated on val and test both ways, with and without
flip averaging (`eval.tta_flip`, test-time augmentation), whatever the config chose, so
the table shows both.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from benchmarks import common


def _parse_args(argv):
  parser = common.parser(__doc__, None, seeds=range(3), workdir_root=True)
  parser.add_argument("--name", help="label in the table (default: the config file's stem)")
  return common.parse(parser, argv)


def run_seed(config: str, seed: int, root: pathlib.Path, overrides: list[str]) -> dict:
  """One seed's run (common.run: reused when finished) plus the last checkpoint evaluated
  both ways, kept beside it in seed<N>.recipe.json."""
  run = common.run(config, root / f"seed{seed}", [f"--config.run.seed={seed}", *overrides])
  extra_path = root / f"seed{seed}.recipe.json"
  extra = json.loads(extra_path.read_text()) if extra_path.exists() else {}
  if "both_ways" not in extra:
    extra["both_ways"] = evaluate_both_ways(root / f"seed{seed}")
    extra_path.write_text(json.dumps(extra, indent=1) + "\n")
  rows = run.pop("rows")
  return {**run, **extra, "test_loss_by_epoch": [row["test_loss"] for row in rows]}


def evaluate_both_ways(workdir: pathlib.Path) -> dict:
  """val/test accuracy of the last checkpoint, plain and flip-averaged: {"test": {"plain":
  ..., "flip_average": ...}, ...}."""
  from fmnist_jax import evaluate, input_pipeline, workdir as workdir_lib
  config = workdir_lib.read_config(workdir)
  splits = input_pipeline.load_splits(config)
  model, params, step = evaluate.restore_params(workdir, config)
  out = {"step": step}
  for name in ("val", "test"):
    if name in splits:
      images, labels = splits[name]
      out[name] = {
          mode: float(np.mean(evaluate.predict(model, params, images,
                                               flip_average=flip)[0].argmax(-1) == labels))
          for mode, flip in (("plain", False), ("flip_average", True))}
  return out


def summarize(name: str, results: list[dict]) -> dict:
  final = [r["final"] for r in results]
  summary = {"name": name, "seeds": len(results), "epochs": final[0]["epoch"]}
  for key in ("test_accuracy", "test_loss", "val_accuracy", "train_accuracy"):
    if key in final[0]:
      summary[key] = common.mean_std([f[key] for f in final])
  best = [r["best_by_val"] for r in results if r.get("best_by_val")]
  if best:
    summary["best_val_accuracy"] = common.mean_std([b["val_accuracy"] for b in best])
    summary["test_accuracy_at_best_val"] = common.mean_std([b["test_accuracy"] for b in best])
  summary["train_seconds"] = common.mean_std([r["training_seconds"] for r in results])
  both = [r["both_ways"] for r in results if "both_ways" in r]
  if len(both) == len(results):
    for name in ("val", "test"):
      for mode in ("plain", "flip_average"):
        if name in both[0]:
          summary[f"{name}_accuracy_{mode}"] = common.mean_std([b[name][mode] for b in both])
  return summary


def to_markdown(summary: dict) -> str:
  def pm(key, scale=100, digits=2):
    return common.pm(summary.get(key), scale, digits)
  return "\n".join(common.table(
      ["recipe", "seeds", "epochs", "test accuracy % (final)", "test loss (final)",
       "test accuracy %, flip-averaged", "best val accuracy %", "train seconds"],
      [[summary["name"], summary["seeds"], f"{summary['epochs']:.0f}", pm("test_accuracy"),
        pm("test_loss", 1, 4), pm("test_accuracy_flip_average"), pm("best_val_accuracy"),
        pm("train_seconds", 1, 0)]]))


def main(argv=None):
  args, overrides = _parse_args(argv)
  machine = common.machine()  # (the code that runs: recorded before it runs)
  name = args.name or pathlib.Path(args.config).stem
  root = pathlib.Path(args.workdir_root)
  results = [run_seed(args.config, seed, root, overrides) for seed in args.seeds]
  summary = summarize(name, results)
  report = {**machine, "config": args.config, "overrides": overrides,
            "seeds": args.seeds, "summary": summary, "runs": results}
  markdown = to_markdown(summary)
  common.write(args.json, report, markdown)
  return report


if __name__ == "__main__":
  main()
