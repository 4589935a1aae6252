"""The report of a population run (fmnist_jax.population): WORKDIR/report/ with a table of the
members, the mean +- std of each setting (test accuracy, loss, expected calibration error, the
train-test gap), every member's curves on one figure, and, apart, each setting's ensemble (its
members' mean probabilities). Written by `fmnist_jax.report` when the workdir is a population's.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np

from fmnist_jax import evaluate, models, plots, population
from fmnist_jax import workdir as workdir_lib

COLUMNS = (("test_accuracy", "test accuracy", 100, "%.2f%%"), ("test_loss", "test loss", 1, "%.4f"),
           ("ece", "ECE", 100, "%.2f%%"), ("gap", "train-test gap", 100, "%.2f pt"))


def member_probabilities(workdir: pathlib.Path, config, found: list[dict], images: np.ndarray,
                         batch_size: int = 1000, step: int | None = None):
  """(step, class probabilities [members, N, 10]) of the latest (or `step`'s) checkpoint's
  members, with the config's test-time augmentation."""
  model, params, step = evaluate.restore_params(workdir, config, step=step)
  per_pass = population.resolve_per_pass(config, jax.devices()[0].platform)
  return step, evaluate.predict(model, params, images, batch_size, per_pass=per_pass,
                                **models.tta_options(config))


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict:
  """Accuracy, loss and ECE of one model's (or an ensemble's) probabilities [N, 10]."""
  predictions = probabilities.argmax(-1)
  true = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None)
  return {"test_accuracy": float(np.mean(predictions == labels)),
          "test_loss": float(-np.mean(np.log(true))),
          "ece": evaluate.calibration(probabilities.max(-1), predictions == labels)["ece"]}


def numbers(config, rows: list[dict], probabilities: np.ndarray, labels: np.ndarray) -> dict:
  """Members, the mean +- std per setting, and each setting's ensemble."""
  found = population.members(config)
  members, settings = [], {}
  for index, member in enumerate(found):
    final = [r for r in rows if r.get("member") == index][-1]
    entry = {"member": index, **population.plain(member),
             "setting": population.setting(final, found), **scores(probabilities[index], labels)}
    entry["gap"] = final["train_accuracy"] - entry["test_accuracy"]
    members.append(entry)
    settings.setdefault(entry["setting"], []).append(index)
  summary, ensembles = {}, {}
  for name, indices in settings.items():
    summary[name] = {key: population.mean_std([members[i][key] for i in indices])
                     for key, *_ in COLUMNS} | {"members": len(indices)}
    ensembles[name] = scores(probabilities[indices].mean(0), labels) | {"members": len(indices)}
  return {"members": members, "settings": summary, "ensembles": ensembles}


def plot_members(rows: list[dict], found: list[dict], path: pathlib.Path) -> str:
  """Every member's test accuracy and loss by epoch, one colour per setting."""
  runs = {f"m{index}": [r for r in rows if r.get("member") == index]
          for index in range(len(found))}
  groups = {label: population.setting(mine[0], found) or "every member"
            for label, mine in runs.items()}
  return plots.curves(runs, path, "Test accuracy and loss, every member", splits=("test",),
                      groups=groups)


def _markdown(workdir, step: int, found: list[dict], result: dict) -> list[str]:
  header = " | ".join(title for _, title, *_ in COLUMNS)
  lines = [f"# Population report: {workdir}", "",
           f"{len(found)} members, trained as one program; the last checkpoint (step {step}) "
           "on the test split.", "", "## Each setting: mean ± std over its members", "",
           f"| setting | members | {header} |", "| --- | --- |" + " --- |" * len(COLUMNS)]
  for name, summary in result["settings"].items():
    cells = [f"{fmt % (scale * summary[key][0])} ± {fmt % (scale * summary[key][1])}"
             for key, _, scale, fmt in COLUMNS]
    lines.append(f"| {name or 'all'} | {summary['members']} | {' | '.join(cells)} |")
  lines += ["", "![every member](members.png)", "", "## Members", "",
            f"| member | fields | {header} |", "| --- | --- |" + " --- |" * len(COLUMNS)]
  for entry in result["members"]:
    cells = [fmt % (scale * entry[key]) for key, _, scale, fmt in COLUMNS]
    lines.append(f"| {entry['member']} | {population.describe(found[entry['member']])} | "
                 f"{' | '.join(cells)} |")
  lines += ["", "## Ensembles (apart: not a member's figure)", "",
            "Each setting's members' mean class probabilities, evaluated as one model.", "",
            "| setting | members | test accuracy | test loss | ECE |",
            "| --- | --- | --- | --- | --- |"]
  for name, ensemble in result["ensembles"].items():
    lines.append(f"| {name or 'all'} | {ensemble['members']} | "
                 f"{100 * ensemble['test_accuracy']:.2f}% | {ensemble['test_loss']:.4f} | "
                 f"{100 * ensemble['ece']:.2f}% |")
  return lines + [""]


def write_report(workdir: pathlib.Path, config, rows: list[dict], splits: dict) -> pathlib.Path:
  """WORKDIR/report/ for a population run, written aside and swapped in whole."""
  found = population.members(config)
  out = workdir / f".{workdir_lib.REPORT}.tmp"
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir()
  images, labels = splits["test"]
  step, probabilities = member_probabilities(workdir, config, found, images)
  result = numbers(config, rows, probabilities, labels)
  plot_members(rows, found, out / "members.png")
  (out / "metrics.json").write_text(json.dumps({"workdir": str(workdir), "step": step,
                                                **result}, indent=2))
  (out / "report.md").write_text("\n".join(_markdown(workdir, step, found, result)))
  return workdir_lib.swap_in(out, workdir / workdir_lib.REPORT)
