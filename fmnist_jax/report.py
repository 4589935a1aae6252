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
from fmnist_jax import population  # noqa: E402
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
  config = workdir_lib.read_config(workdir)
  rows = workdir_lib.read_metrics(workdir, required=True)
  if splits is None:
    splits = input_pipeline.load_splits(config)
  if any("member" in row for row in rows):  # several members: their tables and ensembles
    return write_members_report(workdir, config, rows, splits)
  out = workdir / f".{workdir_lib.REPORT}.tmp"
  shutil.rmtree(out, ignore_errors=True)  # (an interrupted report's)
  out.mkdir()
  figures = {
      "class_distribution": plot_class_distribution(splits, out / "class_distribution.png"),
      "samples_train": plot_samples_per_class(*splits["train"], "Training images per class",
                                              out / "samples_train.png"),
      "samples_test": plot_samples_per_class(*splits["test"], "Test images per class",
                                             out / "samples_test.png"),
      "curves": plots.curves({"run": rows}, out / "curves.png", "Training curves"),
  }
  checkpoints = ["best", "last"]
  if evaluate.best_checkpoint(workdir) is None:
    checkpoints = ["last"]  # no validation split: the last checkpoint, and the report says so
  numbers = {"workdir": str(workdir), "final_metrics": rows[-1],
             "class_balance": _class_balance(splits),
             "checkpoints": _evaluate_checkpoints(workdir, config, checkpoints, splits["test"],
                                                  figures, out)}
  (out / "metrics.json").write_text(workdir_lib.dumps(numbers, indent=2))
  (out / "report.md").write_text("\n".join(_markdown(workdir, config, rows, numbers, figures)))
  return workdir_lib.swap_in(out, workdir / workdir_lib.REPORT)


def _evaluate_checkpoints(workdir, config, checkpoints, test, figures, out) -> dict:
  """Each checkpoint's test evaluation (its numbers, returned) and figures (into `figures`)."""
  test_images, test_labels = test
  numbers, results = {}, {}
  for which in checkpoints:
    model, params, step = evaluate.restore_params(workdir, config, which)
    params = jax.tree.map(lambda x: x[0], params)  # (the run's one member)
    same = [w for w in numbers if numbers[w]["step"] == step]
    if same:  # best and last are the same checkpoint: evaluated once
      results[which], numbers[which] = results[same[0]], numbers[same[0]]
    else:
      results[which] = evaluate.evaluate_split(
          model, params, test_images, test_labels,
          **models.tta_options(config))
      numbers[which] = {"step": step, "parameters": int(sum(np.size(x) for x in
                                                             jax.tree.leaves(params))),
                        **{k: v for k, v in results[which].items()
                           if k not in ("predictions", "confidence")}}
    figures[f"confusion_{which}"] = plot_confusion(
        results[which]["confusion_matrix"],
        f"Test confusion matrix, {which} checkpoint (step {step})", out / f"confusion_{which}.png")
    figures[f"reliability_{which}"] = plot_reliability(
        results[which]["calibration"], f"Reliability, {which} checkpoint (step {step})",
        out / f"reliability_{which}.png")
  chosen = results[checkpoints[0]]
  for name, which, confident in (("correct", "correct", False), ("wrong", "wrong", False),
                                 ("confidently_wrong", "wrong", True)):
    figures[name] = plot_examples(test_images, test_labels, chosen, which, out / f"{name}.png",
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
  """The run at a glance: what was trained, how, where, how long, and how well."""
  starts = workdir_lib.read_run_info(workdir)
  result = workdir_lib.read_result(workdir) or {}
  last = numbers["checkpoints"]["last"]
  final, best = rows[-1], workdir_lib.best_by_val(rows)
  command = _command(starts[0]["argv"]) if starts and starts[0].get("argv") else "?"
  model, opt = config.model, config.optimizer
  lines = [
      ("command", f"`{command}`" + (f" ({len(starts)} starts)" if len(starts) > 1 else "")),
      ("model", f"CNN, conv {tuple(model.conv_features)}, dense {model.dense_features}, "
                f"{last['parameters']:,} parameters, {model.dtype}"),
      ("recipe", f"{opt.name} lr {opt.learning_rate:g} ({opt.schedule}), batch "
                 f"{config.run.batch_size}, dropout {tuple(model.dropout_rates)}, label smoothing "
                 f"{opt.label_smoothing:g}, EMA {opt.ema_decay:g}, shifts "
                 f"{config.augment.translate}, flips {config.augment.flip}"),
      ("device", f"{starts[-1]['device_kind']} x{starts[-1]['device_count']} "
                 f"({starts[-1]['platform']}; host {starts[-1].get('host_cpu', '?')})"
       if starts else "?"),
      ("training", f"step {final['step']}, epoch {final['epoch']:.2f}, "
                   f"{result.get('stop_reason', '?')}; {result.get('train_seconds', 0):.1f} s "
                   f"({result.get('compile_seconds', 0):.1f} s compiling)"),
      ("final", f"test accuracy {100 * final['test_accuracy']:.2f}%, test loss "
                f"{final['test_loss']:.4f}"),
      ("best by validation", f"val accuracy {100 * best['val_accuracy']:.2f}% at step "
                             f"{best['step']} (test {100 * best['test_accuracy']:.2f}%)"
       if best else "no validation split: the last checkpoint is reported")]
  return ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in lines] + [""]


def _markdown(workdir, config, rows, numbers, figures) -> list[str]:
  checkpoints = list(numbers["checkpoints"])
  steps = [numbers["checkpoints"][w]["step"] for w in checkpoints]
  sections = checkpoints if len(set(steps)) == len(steps) else checkpoints[-1:]
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
        "Accuracy and loss per epoch, as recorded in `metrics.jsonl` during training.", "",
        "## Test evaluation", "",
        "| checkpoint | step | test accuracy | test loss | best classes (F1) | "
        "worst classes (F1) |", "| --- | --- | --- | --- | --- | --- |"]
  for which in checkpoints:
    n = numbers["checkpoints"][which]
    md.append(f"| {which} | {n['step']} | {100 * n['accuracy']:.2f}% | {n['loss']:.4f} | "
              f"{', '.join(n['best_classes'])} | {', '.join(n['worst_classes'])} |")
  for which in sections:
    n = numbers["checkpoints"][which]
    title = which.capitalize() if sections == checkpoints else " and ".join(checkpoints)
    md += ["", f"### {title.capitalize()} checkpoint (step {n['step']})", ""]
    md += _class_table(n["classification_report"])
    md += ["", "Most confused pairs (true → predicted: test images): " +
           "; ".join(f"{t} → {p}: {c}" for t, p, c in n["most_confused_pairs"]) + ".", "",
           f"![confusion]({figures[f'confusion_{which}']})", "",
           "Confusion matrix on the test split: counts, and each row divided by its class size.",
           "", f"![reliability]({figures[f'reliability_{which}']})", "",
           f"Expected calibration error on test: {100 * n['calibration']['ece']:.2f}% (15 "
           "equal-width bins): how far the confidence is from the accuracy.", ""]
  return md + ["## Correct vs misclassified", "",
               f"![correct]({figures['correct']})", "",
               f"Correctly classified test images ({checkpoints[0]} checkpoint), with "
               "confidence.", "",
               f"![wrong]({figures['wrong']})", "", "Misclassified test images.", "",
               f"![confidently wrong]({figures['confidently_wrong']})", "",
               "The most confidently wrong test predictions.", ""]


# --- several members (fmnist_jax.population): a table of the members, the mean +- std of each
# setting, every member's curves and, apart, each setting's ensemble -------------------------

MEMBER_COLUMNS = (("test_accuracy", "test accuracy", 100, "%.2f%%"),
                  ("test_loss", "test loss", 1, "%.4f"), ("ece", "ECE", 100, "%.2f%%"),
                  ("gap", "train-test gap", 100, "%.2f pt"))


def member_log_probabilities(workdir: pathlib.Path, config, images: np.ndarray,
                             batch_size: int = 1000, step: int | None = None):
  """(step, class log-probabilities [members, N, 10]) of the latest (or `step`'s) checkpoint's
  members, with the config's test-time augmentation."""
  model, params, step = evaluate.restore_params(workdir, config, step=step)
  per_pass = population.resolve_per_pass(config, jax.devices()[0].platform)
  return step, evaluate.predict(model, params, images, batch_size, per_pass=per_pass,
                                **models.tta_options(config))


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
  members, settings = [], {}
  for index, member in enumerate(found):
    final = [r for r in rows if r.get("member") == index][-1]
    entry = {"member": index, **population.plain(member),
             "setting": population.setting(final, found),
             **scores(log_probabilities[index], labels)}
    entry["gap"] = final["train_accuracy"] - entry["test_accuracy"]
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


def plot_members(rows: list[dict], found: list[dict], path: pathlib.Path) -> str:
  """Every member's test accuracy and loss by epoch, one colour per setting."""
  runs = {f"m{index}": [r for r in rows if r.get("member") == index]
          for index in range(len(found))}
  groups = {label: population.setting(mine[0], found) or "every member"
            for label, mine in runs.items()}
  return plots.curves(runs, path, "Test accuracy and loss, every member", splits=("test",),
                      groups=groups)


def _members_markdown(workdir, step: int, found: list[dict], result: dict) -> list[str]:
  header = " | ".join(title for _, title, *_ in MEMBER_COLUMNS)
  lines = [f"# Population report: {workdir}", "",
           f"{len(found)} members, trained as one program; the last checkpoint (step {step}) "
           "on the test split.", "", "## Each setting: mean ± std over its members", "",
           f"| setting | members | {header} |", "| --- | --- |" + " --- |" * len(MEMBER_COLUMNS)]
  for name, summary in result["settings"].items():
    cells = [f"{fmt % (scale * summary[key][0])} ± {fmt % (scale * summary[key][1])}"
             for key, _, scale, fmt in MEMBER_COLUMNS]
    lines.append(f"| {name or 'all'} | {summary['members']} | {' | '.join(cells)} |")
  lines += ["", "![every member](members.png)", "", "## Members", "",
            f"| member | fields | {header} |", "| --- | --- |" + " --- |" * len(MEMBER_COLUMNS)]
  for entry in result["members"]:
    cells = [fmt % (scale * entry[key]) for key, _, scale, fmt in MEMBER_COLUMNS]
    fields = population.describe(found[entry["member"]]) + (
        " (diverged: stopped, its state from before)" if entry["diverged"] else "")
    lines.append(f"| {entry['member']} | {fields} | {' | '.join(cells)} |")
  lines += ["", "## Ensembles (apart: not a member's figure)", "",
            "Each setting's members' mean class probabilities, evaluated as one model.", "",
            "| setting | members | test accuracy | test loss | ECE |",
            "| --- | --- | --- | --- | --- |"]
  for name, ensemble in result["ensembles"].items():
    lines.append(f"| {name or 'all'} | {ensemble['members']} | "
                 f"{100 * ensemble['test_accuracy']:.2f}% | {ensemble['test_loss']:.4f} | "
                 f"{100 * ensemble['ece']:.2f}% |")
  return lines + [""]


def write_members_report(workdir: pathlib.Path, config, rows: list[dict],
                         splits: dict) -> pathlib.Path:
  """WORKDIR/report/ of a run of several members, written aside and swapped in whole."""
  found = population.members(config)
  out = workdir / f".{workdir_lib.REPORT}.tmp"
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir()
  images, labels = splits["test"]
  step, log_probabilities = member_log_probabilities(workdir, config, images)
  result = member_numbers(config, rows, log_probabilities, labels)
  plot_members(rows, found, out / "members.png")
  (out / "metrics.json").write_text(workdir_lib.dumps({"workdir": str(workdir), "step": step,
                                                **result}, indent=2))
  (out / "report.md").write_text("\n".join(_members_markdown(workdir, step, found, result)))
  return workdir_lib.swap_in(out, workdir / workdir_lib.REPORT)


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
