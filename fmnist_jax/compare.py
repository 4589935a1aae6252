"""Compare runs: `python -m fmnist_jax.compare DIR_A DIR_B ... [--out DIR]`.

Overlays the curves of several workdirs and tabulates final test accuracy, the test accuracy at
the best validation accuracy (chosen on validation, never on test), test loss, and the train -
test accuracy gap. E.g. configs/default.py vs configs/no_dropout.py is the dropout
study. A population's workdir (configs/dropout_study.py) counts as one run per member; a
distilled run's teacher (distill.teacher) is compared with it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from absl import logging

from fmnist_jax import config_file, plots, workdir as workdir_lib
from fmnist_jax.errors import FmnistError, ReportError


def summarize_run(rows: list[dict]) -> dict:
  """A run's line; a value a row holds as null (NaN/inf: a diverged member's loss) stays
  None."""
  final, best = rows[-1], workdir_lib.best_by_val(rows)
  finite = [r for r in rows if r["test_loss"] is not None] or rows[-1:]
  lowest = min(finite, key=lambda r: r["test_loss"] or 0.0)  # (describes overfitting)
  train, test = final["train_accuracy"], final["test_accuracy"]
  return {"epochs": final["epoch"], "final_test_accuracy": test,
          "test_accuracy_at_best_val": best and best["test_accuracy"],
          "best_val_epoch": best and best["epoch"], "final_test_loss": final["test_loss"],
          "lowest_test_loss": lowest["test_loss"], "lowest_test_loss_epoch": lowest["epoch"],
          "final_train_accuracy": train,
          "train_test_gap": None if None in (train, test) else train - test,
          "status": final.get("status", "completed"), "status_step": final.get("status_step")}


def _pct(value, unit: str = "%") -> str:
  return "–" if value is None else f"{100 * value:.2f}{unit}"


def _num(value) -> str:
  """A loss: 4 decimals, or 4 significant digits where it is huge (a diverged one)."""
  return "–" if value is None else f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


def labels(workdirs: list[str]) -> list[str]:
  """A distinct label per run: the shortest tail of its path that no other run shares
  (runs/a/seed0 and runs/b/seed0 -> a/seed0 and b/seed0); the full path for repeats."""
  parts = [pathlib.Path(w).resolve().parts for w in workdirs]
  names = []
  for i, p in enumerate(parts):
    for n in range(1, len(p) + 1):
      tail = p[-n:]
      if all(q[-n:] != tail for j, q in enumerate(parts) if j != i):
        names.append(str(pathlib.PurePath(*tail)))
        break
    else:
      names.append(f"{pathlib.PurePath(*p)} ({i + 1})")
  return names


def _runs_of(name: str, workdir: pathlib.Path) -> dict[str, tuple[list[dict], float | None]]:
  """{label: (metrics rows, test ECE of the last checkpoint where the run's report measured
  it)}: one entry for a run, one per member for a population (NAME/mN, with the values it
  varies: "NAME/m1 (learning_rate=0.003 seed=1)")."""
  rows = workdir_lib.read_metrics(workdir, required=True)
  if not workdir_lib.result_is_current(workdir, rows[-1]["step"]):
    name += f" (unfinished at step {rows[-1]['step']})"  # (training, or stopped short)
  report = workdir / workdir_lib.REPORT / "metrics.json"
  try:
    numbers = json.loads(report.read_text()) if report.exists() else {}
    if "members" in numbers:
      eces = {m["member"]: m.get("ece") for m in numbers["members"]}
    else:
      eces = {None: numbers.get("checkpoints", {}).get("last", {}).get("calibration", {})
              .get("ece")}
  except (ValueError, KeyError, TypeError, AttributeError):
    logging.warning("%s is damaged: its calibration is left out", report)
    eces = {}
  varying = [config_file.field_name(path)
             for path, _ in workdir_lib.read_config(workdir).population.members]
  runs = {}
  for m, mine in workdir_lib.by_member(rows).items():  # (a single run: one, named as it is)
    values = " ".join(f"{key}={mine[0][key]}" for key in varying if key in mine[0])
    label = f"{name}/m{m}" + (f" ({values})" if values else "") if varying else name
    runs[label] = (mine, eces.get(m, eces.get(None)))
  return runs


def _teacher_of(workdir: str) -> str | None:
  """A distilled run's teacher workdir (resolved), which compare lines up beside it."""
  recorded = pathlib.Path(workdir) / workdir_lib.CONFIG_FILE
  teacher = workdir_lib.read_config(workdir).distill.teacher if recorded.exists() else ""
  path = pathlib.Path(teacher).expanduser().resolve()
  return str(path) if teacher and path.is_dir() else None


def compare(workdirs: list[str], out: str) -> pathlib.Path:
  out_path = pathlib.Path(out)
  missing = [w for w in workdirs if not pathlib.Path(w).is_dir()]
  if missing:
    raise ReportError(f"{', '.join(missing)}: no such run folder (pass the --workdir of runs).")
  if out_path.exists() and not out_path.is_dir():
    raise ReportError(f"--out {out} is a file: pass a folder for compare.png, .md and .json.")
  resolved = [str(pathlib.Path(w).resolve()) for w in workdirs]
  for twice in sorted({w for w in resolved if resolved.count(w) > 1}):
    logging.warning("%s is given more than once: compared once", twice)
  workdirs = list(dict.fromkeys(resolved))
  taught = {w: _teacher_of(w) for w in workdirs}
  workdirs += [t for t in dict.fromkeys(taught.values()) if t and t not in workdirs]
  runs, eces = {}, {}
  for name, w in zip(labels(workdirs), workdirs):
    for run_name, (rows, ece) in _runs_of(name, pathlib.Path(w)).items():
      runs[run_name], eces[run_name] = rows, ece
  out_path.mkdir(parents=True, exist_ok=True)  # (only once every run has been read)
  plots.curves(runs, out_path / "compare.png", "Runs compared")

  summary = {name: summarize_run(rows) for name, rows in runs.items()}
  for name in runs:
    summary[name]["last_checkpoint_test_ece"] = eces[name]
  (out_path / "compare.json").write_text(workdir_lib.dumps(summary, indent=2))
  lines = ["| run | epochs | final test acc | test acc at best val (epoch) | final test loss | "
           "lowest test loss (epoch) | final train acc | train − test gap | test ECE |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name, s in summary.items():
    stopped = f" ({s['status']} at step {s['status_step']})" if s["status_step"] else ""
    lines.append(
        f"| {name}{stopped} | {s['epochs']:.2f} | {_pct(s['final_test_accuracy'])} | "
        + (f"{_pct(s['test_accuracy_at_best_val'])} ({s['best_val_epoch']:.2f}) | "
           if s["test_accuracy_at_best_val"] is not None else "no validation split | ")
        + f"{_num(s['final_test_loss'])} | "
        f"{_num(s['lowest_test_loss'])} ({s['lowest_test_loss_epoch']:.2f}) | "
        f"{_pct(s['final_train_accuracy'])} | {_pct(s['train_test_gap'], ' pts')} | "
        f"{_pct(s.get('last_checkpoint_test_ece'))} |")
  names = dict(zip(workdirs, labels(workdirs)))
  lines += ["", *(f"{names[w]} learned from {names[t]} (distill.teacher), compared with it."
                  for w, t in taught.items() if t)]
  (out_path / "compare.md").write_text("\n".join(
      ["# Runs compared", "", "![curves](compare.png)", ""] + lines) + "\n")
  print("\n".join(lines))
  return out_path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+", type=os.path.expanduser)
  parser.add_argument("--out", default="runs/compare", type=os.path.expanduser)
  args = parser.parse_args(argv)
  from fmnist_jax import console
  console.configure()
  try:
    compare(args.workdirs, args.out)
  except FmnistError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
