"""Choose a recipe on the validation split: train a config file's variants, rank them on val.

Each variant of `--config` (its VARIANTS dict, selected as `--config FILE:NAME`) is trained
once through `python -m fmnist_jax.main` (common.run: the benchmarks' one clock; seed 0, the
last 5,000 training images held out, no stopping rule) and evaluated on val and test after
every epoch. Test accuracy is recorded but never
used to choose. Training seconds exclude compilation. The rule (`--choose`):

  fastest:ACC  the variant with the least training time whose final val accuracy >= ACC
               (the speedrun; none reaching it: the one with the highest final val accuracy)
  best         the highest final val accuracy (best accuracy)

`--seeds 1 2` then trains the chosen variant with those seeds too, and evaluates each seed's
last checkpoint on val and test both plainly and flip-averaged: the mean +- std over all its
seeds is the result (benchmarks/results/*.json).

  python -m benchmarks.speedrun_search --config configs/speedrun.py --choose fastest:0.937 \
      --json benchmarks/results/speedrun_search_gpu.json
  python -m benchmarks.speedrun_search --config configs/best.py --choose best --seeds 1 2 \
      --json benchmarks/results/best_accuracy_gpu.json
"""

from __future__ import annotations

import pathlib
import tempfile

from benchmarks import common


def _variants(parser, path: str, only) -> list[str]:
  """The variants to train, checked before any trains: the file's VARIANTS, or `only` of them."""
  from fmnist_jax import config_file
  variants = getattr(config_file.load_module(path), "VARIANTS", None)
  if not isinstance(variants, dict) or not variants:
    parser.error(f"--config {path} defines no VARIANTS to search (configs/speedrun.py and "
                 "configs/best.py do)")
  unknown = [name for name in only or () if name not in variants and name != "base"]
  if unknown:
    parser.error(f"--only {' '.join(unknown)}: not a variant of {path} (its variants: "
                 f"{', '.join(n or 'base' for n in variants)})")
  return [n for n in variants if not only or n in only or (n or "base") in only]


def _check_rule(parser, rule: str) -> None:
  threshold = rule.removeprefix("fastest:")
  try:
    ok = rule == "best" or (threshold != rule and 0 <= float(threshold) <= 1)
  except ValueError:
    ok = False
  if not ok:
    parser.error(f"--choose {rule}: 'best', or 'fastest:ACCURACY' with an accuracy in [0, 1], "
                 "e.g. fastest:0.937")


def run_variant(path: str, name: str, root: pathlib.Path, seed: int, both_ways: bool,
                overrides=()) -> dict:
  """One variant, one seed, through main (common.run's clocks), evaluated on val and test
  after every epoch; no stop, one checkpoint kept."""
  run = common.run(f"{path}:{name}" if name else path, root / f"{name or 'base'}_seed{seed}",
                   [*overrides, f"--config.run.seed={seed}", "--config.eval.stop_at_accuracy=0.0",
                    "--config.checkpoints.keep=1", "--config.checkpoints.keep_best=0"])
  rows = run["rows"]
  out = {"name": name, "seed": seed, "final_val_accuracy": rows[-1]["val_accuracy"],
         "best_val_accuracy": max(r["val_accuracy"] for r in rows),
         "final_test_accuracy": rows[-1]["test_accuracy"],
         "val_accuracy_by_epoch": [r["val_accuracy"] for r in rows],
         "test_accuracy_by_epoch": [r["test_accuracy"] for r in rows],
         "process_seconds": run["process_seconds"], "compile_seconds": run["compile_seconds"],
         "train_seconds_excluding_compile": run["training_seconds"]}
  if both_ways:
    from benchmarks.recipe import evaluate_both_ways
    out["both_ways"] = evaluate_both_ways(root / f"{name or 'base'}_seed{seed}")
  print(f"{name or 'base'} seed {seed}: val {out['final_val_accuracy']:.4f} test "
        f"{out['final_test_accuracy']:.4f} in {out['train_seconds_excluding_compile']:.1f} s"
        + (f" | both ways {out['both_ways']}" if both_ways else ""), flush=True)
  return out


def choose(results: list[dict], rule: str) -> dict:
  """The chosen variant's result, by `rule` (see the module docstring); val only."""
  best = max(results, key=lambda r: r["final_val_accuracy"])
  if rule == "best":
    return best
  threshold = float(rule.removeprefix("fastest:"))
  reaching = [r for r in results if r["final_val_accuracy"] >= threshold]
  return min(reaching, key=lambda r: r["train_seconds_excluding_compile"]) if reaching else best


def summarize_seeds(runs: list[dict]) -> dict:
  summary = {"seeds": [r["seed"] for r in runs]}
  for split in ("val", "test"):
    for mode in ("plain", "flip_average"):
      values = [r["both_ways"][split][mode] for r in runs if split in r.get("both_ways", {})]
      if values:
        summary[f"{split}_accuracy_{mode}"] = common.mean_std(values)
  summary["train_seconds_excluding_compile"] = common.mean_std(
      [r["train_seconds_excluding_compile"] for r in runs])
  return summary


def _markdown(report: dict) -> str:
  lines = [common.machine_line(report), "", f"{report['config']}, chosen by "
           f"`{report['rule']}`: **{report['chosen'] or 'base'}**", "", *common.table(
               ["variant", "final val acc", "best val acc", "train s (no compile)",
                "test acc (not used to choose)"],
               [[r["name"] or "base", f"{100 * r['final_val_accuracy']:.2f}%",
                 f"{100 * r['best_val_accuracy']:.2f}%",
                 f"{r['train_seconds_excluding_compile']:.1f}",
                 f"{100 * r['final_test_accuracy']:.2f}%"] for r in report["results"]])]
  if "seeds_summary" in report:
    s = report["seeds_summary"]
    lines += ["", f"Chosen variant over seeds {s['seeds']} (mean ± std): " + ", ".join(
        f"{key} {common.pm(value, 100)}%" for key, value in s.items()
        if key.endswith(("plain", "flip_average")))]
  return "\n".join(lines)


def main(argv=None):
  parser = common.parser(__doc__, "configs/speedrun.py")
  parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--choose", default="fastest:0.937")
  parser.add_argument("--seeds", type=int, nargs="*", default=[],
                      help="more seeds for the chosen variant")
  args, overrides = common.parse(parser, argv)  # --config.field=value: to every run
  _check_rule(parser, args.choose)
  names = _variants(parser, args.config, args.only)
  report = {**common.machine(), "config": args.config, "rule": args.choose,
            "overrides": overrides, "results": []}
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      report["results"].append(run_variant(args.config, name, pathlib.Path(tmp), args.seed,
                                           bool(args.seeds), overrides))
    chosen = choose(report["results"], args.choose)
    report["chosen"] = chosen["name"]
    if args.seeds:
      runs = [chosen] + [run_variant(args.config, chosen["name"], pathlib.Path(tmp), seed, True,
                                     overrides) for seed in args.seeds]
      report["chosen_seed_runs"] = runs[1:]
      report["seeds_summary"] = summarize_seeds(runs)
  markdown = _markdown(report)
  common.write(args.json, report, markdown)
  return report


if __name__ == "__main__":
  main()
