"""Choose a short recipe on the validation split: train candidates, rank by validation accuracy.

Each candidate is configs/best.py (the seed CNN, 241,546 parameters) with a few fields changed
(batch size with a scaled learning rate, epochs, EMA decay), trained once in this process
(seed 0, the last 5,000 training images held out) and evaluated on validation every epoch.
Test accuracy is recorded but never used to choose. Training seconds exclude compilation.

  python -m benchmarks.speedrun_search --json benchmarks/results/speedrun_search_gpu.json
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

# (name, overrides of configs/best.py)
CANDIDATES = [
    (f"b{batch}_lr{lr:g}_e{epochs}_ema{ema:g}",
     {"batch_size": batch, "learning_rate": lr, "num_epochs": epochs, "ema_decay": ema})
    for batch, lr, ema in ((128, 2e-3, 0.998), (256, 3e-3, 0.995), (512, 4e-3, 0.99),
                           (1024, 6e-3, 0.98))
    for epochs in (8, 12, 16)
]


def run_candidate(name: str, overrides: dict, root: pathlib.Path, seed: int) -> dict:
  from configs import best
  from fmnist_jax import train, workdir
  config = best.get_config()
  config.update({**overrides, "seed": seed, "write_report": False, "keep_checkpoints": 1,
                 "keep_best_checkpoints": 0})
  train.train_and_evaluate(config, str(root / name))
  result = workdir.read_result(root / name)
  rows = workdir.read_metrics(root / name)
  return {"name": name, "overrides": overrides, "seed": seed,
          "final_val_accuracy": rows[-1]["val_accuracy"],
          "best_val_accuracy": max(r["val_accuracy"] for r in rows),
          "final_test_accuracy": rows[-1]["test_accuracy"],
          "val_accuracy_by_epoch": [r["val_accuracy"] for r in rows],
          "test_accuracy_by_epoch": [r["test_accuracy"] for r in rows],
          "train_seconds": result["train_seconds"], "compile_seconds": result["compile_seconds"],
          "train_seconds_excluding_compile": result["train_seconds"] - result["compile_seconds"]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", required=True)
  parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
  parser.add_argument("--seed", type=int, default=0)
  args, extra = parser.parse_known_args(argv)
  from benchmarks import common
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, overrides in CANDIDATES:
      if args.only and name not in args.only:
        continue
      overrides = {**overrides, **dict(common.parse_override(e) for e in extra)}
      results.append(run_candidate(name, overrides, pathlib.Path(tmp), args.seed))
      r = results[-1]
      print(f"{name}: val {r['final_val_accuracy']:.4f} (best {r['best_val_accuracy']:.4f}) "
            f"test {r['final_test_accuracy']:.4f} in {r['train_seconds_excluding_compile']:.1f}"
            " s", flush=True)
  lines = ["| candidate | final val acc | best val acc | train s (no compile) | test acc (not "
           "used to choose) |", "| --- | --- | --- | --- | --- |"]
  lines += [f"| {r['name']} | {100 * r['final_val_accuracy']:.2f}% | "
            f"{100 * r['best_val_accuracy']:.2f}% | {r['train_seconds_excluding_compile']:.1f} | "
            f"{100 * r['final_test_accuracy']:.2f}% |" for r in results]
  report = {**common.machine(), "base": "configs/best.py", "results": results}
  common.write(args.json, report, common.machine_line(report) + "\n\n" + "\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
