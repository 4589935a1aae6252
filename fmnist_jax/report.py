"""The visual report of a trained workdir: `python -m fmnist_jax.report --workdir DIR`.

Writes DIR/report/: data exploration, training curves (from the run's own metrics.jsonl), test
evaluation of the best (by validation accuracy) and last checkpoints, correct vs misclassified
examples, `report.md` tying it together, and `metrics.json` with every number. A run of several
members (fmnist_jax.population) gets, from the same checkpoint restore and predictions, a table
of its members, the mean +- std of each setting, every member's curves and each setting's
ensemble.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from fmnist_jax import dataset, evaluate, input_pipeline, models, plots  # noqa: E402
from fmnist_jax import config_file, pbt, population  # noqa: E402
from fmnist_jax import workdir as workdir_lib  # noqa: E402
from fmnist_jax.dataset import CLASS_NAMES  # noqa: E402
from fmnist_jax.errors import DiskFullError, FmnistError, ReportError  # noqa: E402
from fmnist_jax.errors import is_disk_full  # noqa: E402

SHORT_NAMES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
               "Bag", "Boot")


def _save(fig, path: pathlib.Path) -> str:
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path.name


# --- 1. data exploration ----------------------------------------------------------------------

def plot_class_distribution(splits: dict, path: pathlib.Path) -> str:
  fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), sharey=False)
  for ax, (name, (_, labels)) in zip(np.atleast_1d(axes), splits.items()):
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    ax.bar(range(len(CLASS_NAMES)), counts, color="tab:blue")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_title(f"{name}: {len(labels):,} images")
    ax.set_ylabel("images per class")
  fig.suptitle("Class distribution")
  return _save(fig, path)


def plot_samples_per_class(images, labels, title: str, path: pathlib.Path,
                           per_class: int = 8) -> str:
  fig, axes = plt.subplots(len(CLASS_NAMES), per_class, figsize=(per_class * 0.9 + 1.6, 10.5))
  for c, name in enumerate(CLASS_NAMES):
    index = np.flatnonzero(labels == c)[:per_class]
    for j in range(per_class):
      ax = axes[c, j]
      ax.axis("off")
      if j < len(index):
        ax.imshow(images[index[j], ..., 0], cmap="gray_r")
    axes[c, 0].text(-4, 14, name, ha="right", va="center", fontsize=9)
  fig.suptitle(title)
  fig.subplots_adjust(left=0.16, top=0.95, wspace=0.05, hspace=0.08)
  return _save(fig, path)


# --- 2. evaluation (training curves: fmnist_jax.plots) ----------------------------------------

def plot_confusion(confusion: np.ndarray, title: str, path: pathlib.Path) -> str:
  confusion = np.asarray(confusion)
  normalized = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
  fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
  for ax, matrix, fmt, subtitle in ((axes[0], confusion, "d", "counts"),
                                    (axes[1], normalized, ".2f", "row-normalised (recall)")):
    ax.imshow(matrix, cmap="Blues")
    threshold = matrix.max() / 2
    for i in range(matrix.shape[0]):
      for j in range(matrix.shape[1]):
        ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", fontsize=7,
                color="white" if matrix[i, j] > threshold else "black")
    ax.set_xticks(range(len(SHORT_NAMES)), SHORT_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(SHORT_NAMES)), SHORT_NAMES)
    ax.set(xlabel="predicted class", ylabel="true class", title=subtitle)
  fig.suptitle(title)
  return _save(fig, path)


def plot_reliability(calibration: dict, title: str, path: pathlib.Path) -> str:
  """Accuracy against confidence per bin: a calibrated model lies on the diagonal."""
  bins = len(calibration["bin_count"])
  centres = (np.arange(bins) + 0.5) / bins
  used = np.asarray(calibration["bin_count"]) > 0
  fig, ax = plt.subplots(figsize=(4.8, 4.5))
  ax.bar(centres[used], np.asarray(calibration["bin_accuracy"])[used], width=1 / bins,
         edgecolor="black", alpha=0.7, label="accuracy")
  ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
  ax.set(xlabel="confidence (max softmax probability)", ylabel="accuracy", xlim=(0, 1),
         ylim=(0, 1), title=f"{title}\nECE {100 * calibration['ece']:.2f}%")
  ax.legend(loc="upper left")
  return _save(fig, path)


def plot_examples(images, labels, result, which: str, path: pathlib.Path, count: int = 24,
                  most_confident: bool = False) -> str:
  predictions, confidence = result["predictions"], result["confidence"]
  chosen = np.flatnonzero((predictions == labels) if which == "correct" else
                          (predictions != labels))
  if most_confident:
    chosen = chosen[np.argsort(-confidence[chosen])]
  chosen = chosen[:count]
  columns = 8
  rows = max(1, int(np.ceil(len(chosen) / columns)))
  fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.55, rows * 1.95))
  for ax in np.atleast_1d(axes).ravel():
    ax.axis("off")
  for ax, i in zip(np.atleast_1d(axes).ravel(), chosen):
    ax.imshow(images[i, ..., 0], cmap="gray_r")
    ax.set_title(f"true {SHORT_NAMES[labels[i]]}\npred {SHORT_NAMES[predictions[i]]} "
                 f"{100 * confidence[i]:.0f}%", fontsize=7.5,
                 color="tab:green" if predictions[i] == labels[i] else "tab:red")
  title = {"correct": "Correctly classified test images",
           "wrong": "Misclassified test images"}[which]
  fig.suptitle(title + (" (most confident first)" if most_confident else ""))
  fig.tight_layout()
  return _save(fig, path)


def _class_table(report: dict) -> list[str]:
  lines = ["| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
  for name in list(CLASS_NAMES) + ["macro avg", "weighted avg"]:
    r = report[name]
    lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1-score']:.3f} "
                 f"| {int(r['support'])} |")
  return lines


# --- the report -------------------------------------------------------------------------------

def write_report(workdir: str, splits: dict | None = None) -> pathlib.Path:
  """Writes WORKDIR/report/ as a whole: into WORKDIR/.report.tmp/, swapped in at the end, so
  that an interrupted report leaves the previous one (or none), never a mix, and no
  .report.tmp (a full disk and a SIGTERM are one line each). Returns its path. `splits` (name
  -> arrays) saves a reload."""
  workdir = pathlib.Path(workdir)
  again = f"write it with `python -m fmnist_jax.report --workdir {workdir}`"
  try:
    with _sigterm_raises(ReportError(
        f"terminated (SIGTERM) while writing the report of {workdir}: the training is complete "
        f"and saved, the previous report (if any) intact; {again}.")):
      return _write_report(workdir, splits)
  except BaseException as e:
    shutil.rmtree(workdir / f".{workdir_lib.REPORT}.tmp", ignore_errors=True)
    if is_disk_full(e) and not isinstance(e, DiskFullError):
      raise DiskFullError(
          f"no space left on the device holding {workdir} while writing its report: the "
          "training is complete and saved, the previous report (if any) intact. Free space "
          f"there, then {again}.") from None
    raise


@contextlib.contextmanager
def _sigterm_raises(error: Exception):
  """SIGTERM raises `error` in the main thread while the block runs (elsewhere: unchanged)."""
  def handler(signum, frame):
    raise error
  try:
    previous = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # (not the main thread)
    yield
    return
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def _write_report(workdir: pathlib.Path, splits: dict | None) -> pathlib.Path:
  """One report for any number of members: a single run is the population whose ensemble is
  its one member. Each checkpoint (each member's best by validation, and the last) is analysed
  as the ensemble of the members that did not diverge, and, where they differ, as each
  setting's; several members add their table and curves."""
  config = workdir_lib.read_config(workdir)
  rows = workdir_lib.read_metrics(workdir, required=True)
  splits = splits or input_pipeline.load_splits(config)
  found = population.members(config)
  out = workdir / f".{workdir_lib.REPORT}.tmp"
  shutil.rmtree(out, ignore_errors=True)  # (an interrupted report's)
  out.mkdir()
  images, labels = splits["test"]
  chosen = {which: evaluate.member_steps(workdir, rows, len(found), which)
            for which in ("best", "last")}
  chosen = {which: steps for which, steps in chosen.items() if steps}  # (best: a val split)
  by_steps = {tuple(steps): None for steps in chosen.values()}  # (best = last: predicted once)
  by_steps = {steps: evaluate.member_predictions(workdir, config, list(steps), images)
              for steps in by_steps}
  predicted = {which: by_steps[tuple(steps)] for which, steps in chosen.items()}
  runs, groups = population.curve_runs(rows, found)
  figures = {
      "class_distribution": plot_class_distribution(splits, out / "class_distribution.png"),
      "samples_train": plot_samples_per_class(*splits["train"], "Training images per class",
                                              out / "samples_train.png"),
      "samples_test": plot_samples_per_class(*splits["test"], "Test images per class",
                                             out / "samples_test.png"),
      "curves": plots.curves(runs, out / "curves.png", "Training curves", groups=groups)}
  if config.pbt.every_epochs:
    figures["schedules"] = plots.schedules(
        workdir_lib.by_member(rows), [config_file.field_name(path) for path
                                      in pbt.explored(found[0])], out / "schedules.png")
  summary = population.result(found, rows, rows[-1]["step"])
  numbers = {"workdir": str(workdir), "final_metrics": summary["final"],
             "class_balance": _class_balance(splits), "result": summary}
  numbers["groups"] = {}
  for i, (name, indices) in enumerate(population.ensembles(config, found, rows).items()):
    suffix = "_" + "".join(c if c.isalnum() else "_" for c in name.removeprefix("ensemble of "))
    numbers["groups"][name] = _analyse_group(indices, chosen, predicted, splits["test"], name,
                                             suffix if i else "", figures, out)
  numbers["checkpoints"] = next(iter(numbers["groups"].values()))
  if len(found) > 1:
    numbers.update(member_numbers(config, rows, predicted["last"], labels))
  (out / "metrics.json").write_text(workdir_lib.dumps(numbers, indent=2))
  (out / "report.md").write_text("\n".join(_markdown(workdir, config, rows, numbers, figures)))
  return workdir_lib.swap_in(out, workdir / workdir_lib.REPORT)


def _analyse_group(indices, chosen, predicted, test, name, suffix, figures, out) -> dict:
  """A group's ensemble at each checkpoint: its numbers (returned) and figures (into
  `figures`, named by the checkpoint and `suffix`; the first group's, "", also the
  examples)."""
  images, labels = test
  numbers, results = {}, {}
  for which in chosen:
    steps = sorted({chosen[which][m] for m in indices})
    results[which] = evaluate.analyse(evaluate.ensemble(predicted[which][indices]), labels)
    numbers[which] = {"step": steps[0] if len(steps) == 1 else steps, "members": len(indices),
                      **{k: v for k, v in results[which].items()
                         if k not in ("predictions", "confidence")}}
    where = _where(which, numbers[which])
    numbers[which]["figures"] = {
        "confusion": plot_confusion(results[which]["confusion_matrix"],
                                    f"Test confusion matrix, {name}, {where}",
                                    out / f"confusion_{which}{suffix}.png"),
        "reliability": plot_reliability(results[which]["calibration"],
                                        f"Reliability, {name}, {where}",
                                        out / f"reliability_{which}{suffix}.png")}
  if not suffix:  # (the examples: the first group's first checkpoint)
    first = results[next(iter(chosen))]
    for key, kind, confident in (("correct", "correct", False), ("wrong", "wrong", False),
                                 ("confidently_wrong", "wrong", True)):
      figures[key] = plot_examples(images, labels, first, kind, out / f"{key}.png",
                                   most_confident=confident)
  return numbers


def _command(argv: list[str]) -> str:
  """The command line of a start, as it can be pasted again."""
  import shlex
  program = ("python -m fmnist_jax.main" if argv[0].endswith(("fmnist_jax/main.py", "-m"))
             else shlex.quote(argv[0]))
  return " ".join([program, *map(shlex.quote, argv[1:])])


def _class_balance(splits: dict) -> str:
  """What the class counts of each split show."""
  parts = []
  for name, (_, labels) in splits.items():
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    parts.append(f"{name}: {counts[0]:,} images in every class" if counts.min() == counts.max()
                 else f"{name}: from {counts.min():,} ({CLASS_NAMES[counts.argmin()]}) to "
                 f"{counts.max():,} ({CLASS_NAMES[counts.argmax()]}) images per class")
  return "; ".join(parts)


def _headline(workdir, config, rows, numbers) -> list[str]:
  """The run at a glance: what was trained, how, where, how long, and how well (of several
  members: their means, result.json's)."""
  starts = workdir_lib.read_run_info(workdir)
  result = workdir_lib.read_result(workdir) or {}
  final, best = numbers["result"]["final"], numbers["result"]["best_by_val"]
  members = f", the mean of {final['members']} members" if "members" in final else ""
  command = _command(starts[0]["argv"]) if starts and starts[0].get("argv") else "?"
  model, opt = config.model, config.optimizer
  lines = [
      ("command", f"`{command}`" + (f" ({len(starts)} starts)" if len(starts) > 1 else "")),
      ("model", f"CNN, conv {tuple(model.conv_features)}, dense {model.dense_features}, "
                f"{models.parameter_count(config):,} parameters, {model.dtype}"),
      ("recipe", f"{opt.name} lr {opt.learning_rate:g} ({opt.schedule}), batch "
                 f"{config.run.batch_size}, dropout {tuple(model.dropout_rates)}, label smoothing "
                 f"{opt.label_smoothing:g}, EMA {opt.ema_decay:g}, shifts "
                 f"{config.augment.translate}, flips {config.augment.flip}"),
      ("device", f"{starts[-1]['device_kind']} x{starts[-1]['device_count']} "
                 f"({starts[-1]['platform']}; host {starts[-1].get('host_cpu', '?')})"
       if starts else "?"),
      ("training", f"step {rows[-1]['step']}, epoch {final['epoch']:.2f}, "
                   f"{result.get('stop_reason', '?')}; {result.get('train_seconds', 0):.1f} s "
                   f"({result.get('compile_seconds', 0):.1f} s compiling)"),
      ("final", f"test accuracy {_pct(final.get('test_accuracy'))}, test loss "
                f"{_num(final.get('test_loss'))}{members}"),
      ("best by validation", f"val accuracy {_pct(best['val_accuracy'])}"
                             + (f" at step {best['step']}" if "step" in best else
                                " (each member at its best)")
                             + f" (test {_pct(best['test_accuracy'])})"
       if best else "no validation split: the last checkpoint is reported")]
  if "distill" in result:
    lines.append(("teacher", _teacher(result["distill"])))
  return ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in lines] + [""]


def _teacher(d: dict) -> str:
  """The headline's teacher: what taught this run (result.json's `distill`), how well it does
  alone, and how often the run agrees with it."""
  each = d["teacher_test_accuracy"]
  return (f"`{d['teacher']}`: the ensemble of {len(d['members'])} member(s) at their best "
          f"checkpoints (test {_pct(each[0])} ± {100 * each[1]:.2f} each, "
          f"{_pct(d['teacher_ensemble_test_accuracy'])} together), temperature "
          f"{d['temperature']:g}, weight {d['weight']:g}, {d['teacher_sees']}; the final test "
          f"predictions agree with the teacher's on {_pct(d['test_agreement'][0])} of the images "
          "(the training loss is the distillation loss)")


def _pct(value) -> str:
  return "–" if value is None else f"{100 * value:.2f}%"


def _num(value) -> str:
  return "–" if value is None else f"{value:.4f}"


def _where(which: str, n: dict) -> str:
  """Which checkpoint a figure uses: "best checkpoint (step 20)", or of several members each
  one's best by validation (their steps)."""
  step = n["step"]
  each = "best by validation" if which == "best" else "last"
  return (f"{which} checkpoint (step {step})" if isinstance(step, int) else
          f"{which} checkpoints (each member's {each}: steps {', '.join(map(str, step))})")


def _markdown(workdir, config, rows, numbers, figures) -> list[str]:
  first = next(iter(numbers["groups"]))
  md = [f"# Report: `{workdir}`", ""] + _headline(workdir, config, rows, numbers) + [
        f"{len(rows)} evaluation{'s' if len(rows) != 1 else ''}; final step {rows[-1]['step']}, "
        f"epoch {rows[-1]['epoch']:.2f}. "
        "All numbers are in `metrics.json`.", "",
        "## Data", "",
        f"![class distribution]({figures['class_distribution']})", "",
        f"Class distribution of each split: {numbers['class_balance']}.", "",
        f"![train samples]({figures['samples_train']})", "",
        "Training images, one row per class.", "",
        f"![test samples]({figures['samples_test']})", "", "Test images, one row per class.", "",
        "## Training curves", "", f"![curves]({figures['curves']})", "",
        "Accuracy and loss per epoch, as recorded in `metrics.jsonl` during training"
        + ("." if first == "run" else ", one colour per setting."), "",
        "## Test evaluation", "",
        "| " + ("" if first == "run" else "ensemble | ") + "checkpoint | step | test accuracy | "
        "test loss | best classes (F1) | worst classes (F1) |",
        "| --- " * (6 if first == "run" else 7) + "|"]
  for group, checkpoints in numbers["groups"].items():
    for which, n in checkpoints.items():
      md.append(("| " if first == "run" else f"| {group} ({n['members']}) | ")
                + f"{which} | {n['step']} | {_pct(n['accuracy'])} | {_num(n['loss'])} | "
                f"{', '.join(n['best_classes'])} | {', '.join(n['worst_classes'])} |")
  for group, checkpoints in numbers["groups"].items():
    md += _group_sections(group, checkpoints)
  md += ["## Correct vs misclassified", "", f"![correct]({figures['correct']})", "",
         f"Correctly classified test images ({'' if first == 'run' else first + ', '}"
         f"{next(iter(numbers['groups'][first]))} checkpoint), with confidence.", "",
         f"![wrong]({figures['wrong']})", "", "Misclassified test images.", "",
         f"![confidently wrong]({figures['confidently_wrong']})", "",
         "The most confidently wrong test predictions.", ""]
  if "schedules" in figures:
    best = numbers["result"]["population"]["best_member"]
    md += ["## Population-based training", "", f"![schedules]({figures['schedules']})", "",
           f"Every {config.pbt.every_epochs} epoch(s) the bottom {config.pbt.fraction:g} of the "
           "members by validation accuracy took the state of a top member and perturbed its "
           f"values. The best member by validation: {best['member']} "
           f"({_pct(best['val_accuracy'])}); its schedule (result.json) replays with "
           f"`--config.pbt.replay={workdir}:{best['member']}`.", ""]
  return md + (_members_markdown(numbers) if "members" in numbers else [])


def _group_sections(group: str, checkpoints: dict) -> list[str]:
  """A group's per-checkpoint sections (one where best and last are the same checkpoint):
  the class table, the most confused pairs, the confusion matrix and the reliability."""
  steps = [n["step"] for n in checkpoints.values()]
  sections = list(checkpoints) if steps[0] != steps[-1] else list(checkpoints)[-1:]
  md = []
  for which in sections:
    n = checkpoints[which]
    title = which if len(sections) == len(checkpoints) else " and ".join(checkpoints)
    where = _where(title, n).capitalize()
    md += ["", f"### {where}" if group == "run" else f"### {group.capitalize()}: {where}", ""]
    md += _class_table(n["classification_report"])
    md += ["", "Most confused pairs (true → predicted: test images): " +
           "; ".join(f"{t} → {p}: {c}" for t, p, c in n["most_confused_pairs"]) + ".", "",
           f"![confusion]({n['figures']['confusion']})", "",
           "Confusion matrix on the test split: counts, and each row divided by its class size.",
           "", f"![reliability]({n['figures']['reliability']})", "",
           f"Expected calibration error on test: {100 * n['calibration']['ece']:.2f}% (15 "
           "equal-width bins): how far the confidence is from the accuracy.", ""]
  return md


# --- several members (fmnist_jax.population): a table of the members, the mean +- std of each
# setting, every member's curves and, apart, each setting's ensemble -------------------------

MEMBER_COLUMNS = (("test_accuracy", "test accuracy", 100, "%.2f%%"),
                  ("test_loss", "test loss", 1, "%.4f"), ("ece", "ECE", 100, "%.2f%%"),
                  ("gap", "train-test gap", 100, "%.2f pt"))


def scores(log_probabilities: np.ndarray, labels: np.ndarray) -> dict:
  """Accuracy, loss (evaluate.nll: the training loop's) and ECE of one model's (or an
  ensemble's) log-probabilities [N, 10]."""
  predictions = log_probabilities.argmax(-1)
  confidence = np.exp(log_probabilities.max(-1))
  return {"test_accuracy": float(np.mean(predictions == labels)),
          "test_loss": evaluate.nll(log_probabilities, labels),
          "ece": evaluate.calibration(confidence, predictions == labels)["ece"]}


def member_numbers(config, rows: list[dict], log_probabilities: np.ndarray,
                   labels: np.ndarray) -> dict:
  """Members, the mean +- std per setting, and each setting's ensemble."""
  found = population.members(config)
  members, settings, last = [], {}, population.last_rows(rows)
  for index, member in enumerate(found):
    final = last[index]
    entry = {"member": index, **population.plain(member), "fields": population.describe(member),
             "setting": population.setting(final, found),
             **scores(log_probabilities[index], labels)}
    entry["gap"] = None if final["train_accuracy"] is None else \
        final["train_accuracy"] - entry["test_accuracy"]
    entry["diverged"] = bool(final.get("diverged"))  # (stopped there: listed, not summed)
    members.append(entry)
    if not entry["diverged"]:
      settings.setdefault(entry["setting"], []).append(index)
  summary, ensembles = {}, {}
  for name, indices in settings.items():
    summary[name] = {key: population.mean_std([members[i][key] for i in indices])
                     for key, *_ in MEMBER_COLUMNS} | {"members": len(indices)}
    ensembles[name] = scores(evaluate.ensemble(log_probabilities[indices]), labels) | {
        "members": len(indices)}
  return {"members": members, "settings": summary, "ensembles": ensembles}


def _members_markdown(numbers: dict) -> list[str]:
  """Several members: each setting's mean ± std over its members, and each member, at the last
  checkpoint (a member that diverged: listed, marked, left out of the means and ensembles)."""
  header = " | ".join(title for _, title, *_ in MEMBER_COLUMNS)
  lines = ["## Each setting: mean ± std over its members", "",
           "The last checkpoint of each member, on the test split.", "",
           f"| setting | members | {header} |", "| --- | --- |" + " --- |" * len(MEMBER_COLUMNS)]
  for name, summary in numbers["settings"].items():
    cells = [f"{fmt % (scale * summary[key][0])} ± {fmt % (scale * summary[key][1])}"
             for key, _, scale, fmt in MEMBER_COLUMNS]
    lines.append(f"| {name or 'all'} | {summary['members']} | {' | '.join(cells)} |")
  lines += ["", "## Members", "", f"| member | fields | {header} |",
            "| --- | --- |" + " --- |" * len(MEMBER_COLUMNS)]
  for entry in numbers["members"]:
    cells = ["–" if entry[key] is None else fmt % (scale * entry[key])
             for key, _, scale, fmt in MEMBER_COLUMNS]
    fields = entry["fields"] + (" (diverged: stopped, its state from before)"
                                if entry["diverged"] else "")
    lines.append(f"| {entry['member']} | {fields} | {' | '.join(cells)} |")
  return lines + [""]


def main(argv=None):
  import argparse
  parser = argparse.ArgumentParser(description="Write the visual report of a trained workdir.")
  parser.add_argument("--workdir", required=True, type=os.path.expanduser)
  args = parser.parse_args(argv)
  dataset.quiet_tensorflow()
  from fmnist_jax import console
  console.configure()
  try:
    workdir_lib.read_config(args.workdir)  # (not a run's workdir: that error first)
    lock = workdir_lib.Lock(pathlib.Path(args.workdir))  # not while a run trains or reports
  except FmnistError as e:
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: cannot write the report into {args.workdir}: {e.strerror or e}")
  try:
    out = write_report(args.workdir)
  except FmnistError as e:
    sys.exit(f"error: {e}")
  finally:
    lock.release()
  print(f"report written to {out}/report.md")


if __name__ == "__main__":
  main()
