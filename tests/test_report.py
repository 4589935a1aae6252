import json

import numpy as np
import pytest

import subprocess
import sys

from conftest import ROOT, tiny_config
from fmnist_jax import compare, errors, evaluate, main, report, train, workdir as workdir_lib


def test_classification_report_and_confusion_matrix_match_a_hand_computed_example():
  labels = np.array([0, 0, 1, 1, 2, 2, 2])
  predictions = np.array([0, 1, 1, 1, 0, 2, 2])
  names = ("a", "b", "c")
  confusion = evaluate.confusion_matrix(labels, predictions, 3)
  np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
  r = evaluate.classification_report(labels, predictions, names)
  assert r["a"]["precision"] == pytest.approx(1 / 2) and r["a"]["recall"] == pytest.approx(1 / 2)
  assert r["b"]["precision"] == pytest.approx(2 / 3) and r["b"]["recall"] == pytest.approx(1.0)
  assert r["c"]["precision"] == pytest.approx(1.0) and r["c"]["recall"] == pytest.approx(2 / 3)
  assert r["b"]["f1-score"] == pytest.approx(0.8) and r["c"]["support"] == 3
  assert r["accuracy"] == pytest.approx(5 / 7)
  assert evaluate.most_confused_pairs(confusion, 2, names) == [("c", "a", 1), ("a", "b", 1)]


def test_report_writes_every_file(trained_workdir):
  out = report.write_report(str(trained_workdir))
  names = {"class_distribution.png", "samples_train.png", "samples_test.png", "curves.png",
           "confusion_best.png", "confusion_last.png", "correct.png", "wrong.png",
           "confidently_wrong.png", "report.md", "metrics.json", "reliability_last.png"}
  assert names <= {p.name for p in out.iterdir()}
  assert all((out / n).stat().st_size > 1000 for n in names if n.endswith(".png"))
  numbers = json.loads((out / "metrics.json").read_text())
  last = numbers["checkpoints"]["last"]
  assert last["step"] == 24 and last["count"] == 75
  assert np.sum(last["confusion_matrix"]) == 75
  # The last checkpoint's accuracy is the one the run itself measured at its final evaluation.
  assert last["accuracy"] == pytest.approx(numbers["final_metrics"]["test_accuracy"])
  text = (out / "report.md").read_text()
  assert "Most confused pairs" in text and "![curves](curves.png)" in text
  assert "Expected calibration error on test: " in text
  # The headline: what was trained, how, where, how long, how well.
  head = text.split("## Data")[0]
  for row in ("| command |", "| model | CNN, conv (4, 8, 8), dense 16, ", "| recipe | adam",
              "| device | cpu", "| training | step 24, epoch 2.00, completed;",
              f"| final | test accuracy {100 * numbers['final_metrics']['test_accuracy']:.2f}%"):
    assert row in head, head
  best = numbers["checkpoints"]["best"]
  sections = text.count("checkpoint (step ")
  assert sections == (1 if best["step"] == last["step"] else 2)
  if best["step"] == last["step"]:
    assert "### Best and last checkpoint" in text


def test_report_on_a_workdir_without_metrics_or_checkpoints_is_a_clear_error(trained_workdir):
  (trained_workdir / "metrics.jsonl").rename(trained_workdir / "kept.jsonl")
  with pytest.raises(evaluate.ReportError, match="no metrics.jsonl"):
    report.write_report(str(trained_workdir))
  (trained_workdir / "kept.jsonl").rename(trained_workdir / "metrics.jsonl")
  (trained_workdir / "checkpoints").rename(trained_workdir / "moved")
  with pytest.raises(evaluate.ReportError, match="has no checkpoint in"):
    report.write_report(str(trained_workdir))
  with pytest.raises(evaluate.ReportError, match="no config.json"):
    report.write_report(str(trained_workdir / "moved"))


def test_compare_tabulates_runs(small_splits, tmp_path):
  for name, rates in (("with", (0.25, 0.4, 0.3)), ("without", (0.0, 0.0, 0.0))):
    train.train_and_evaluate(tiny_config(run=dict(num_epochs=2), model=dict(dropout_rates=rates)),
                             str(tmp_path / name))
  out = compare.compare([str(tmp_path / "with"), str(tmp_path / "without")],
                        str(tmp_path / "cmp"))
  summary = json.loads((out / "compare.json").read_text())
  assert set(summary) == {"with", "without"}
  rows = [json.loads(l) for l in (tmp_path / "with" / "metrics.jsonl").read_text().splitlines()]
  assert summary["with"]["train_test_gap"] == pytest.approx(
      rows[-1]["train_accuracy"] - rows[-1]["test_accuracy"])
  assert "| without |" in (out / "compare.md").read_text()
  assert "test ECE |" in (out / "compare.md").read_text()


def test_compare_labels_runs_by_their_distinct_path_parts():
  assert compare.labels(["runs/a/seed0", "runs/b/seed0", "runs/c"]) == \
      ["a/seed0", "b/seed0", "c"]
  twice = compare.labels(["runs/x", "runs/x"])
  assert len(set(twice)) == 2  # the same run twice is never merged into one


def test_compare_lists_a_run_given_twice_once_and_marks_one_unfinished(trained_workdir,
                                                                      tmp_path, caplog):
  """A workdir given twice (once with a trailing slash) is compared once, with a warning, and
  labelled without a doubled slash; a run whose result.json does not describe its last row
  (still training, or stopped short) says so; a huge loss prints in 4 significant digits."""
  (trained_workdir / "result.json").unlink()
  out = compare.compare([str(trained_workdir), str(trained_workdir) + "/"], str(tmp_path / "c"))
  (name,) = json.loads((out / "compare.json").read_text())
  assert name == "run (unfinished at step 24)" and "//" not in name
  assert "is given more than once: compared once" in caplog.text
  assert compare.labels(["/tmp/x", "/tmp/x"])[0] == "/tmp/x (1)"
  assert compare._num(1.18e34) == "1.18e+34" and compare._num(0.25) == "0.2500"


def test_compare_draws_validation_and_handles_a_single_evaluation(small_splits, tmp_path):
  train.train_and_evaluate(tiny_config(run=dict(num_train_steps=6)), str(tmp_path / "short"))
  out = compare.compare([str(tmp_path / "short")], str(tmp_path / "cmp"))
  table = (out / "compare.md").read_text()
  assert "| short | 0.50 |" in table  # one evaluation, half an epoch: not "0"
  import matplotlib.image
  assert matplotlib.image.imread(out / "compare.png").shape[0] > 100



def test_expected_calibration_error_matches_a_hand_computed_example():
  """Two bins used: (0.8, 0.867] holds 0.85 and 0.85 (one right: accuracy 0.5), (0.6, 0.667]
  holds 0.65 and 0.65 (both right). ECE = 2/4 * |0.5 - 0.85| + 2/4 * |1 - 0.65| = 0.35."""
  result = evaluate.calibration(np.array([0.85, 0.85, 0.65, 0.65]),
                                np.array([True, False, True, True]))
  assert result["ece"] == pytest.approx(0.35)
  assert sum(result["bin_count"]) == 4
  perfect = evaluate.calibration(np.array([1.0, 1.0]), np.array([True, True]))
  assert perfect["ece"] == pytest.approx(0.0)


def test_the_report_says_what_its_numbers_show(small_splits, tmp_path):
  """One evaluation (a few steps): "1 evaluation", an epoch axis, the class counts as they are
  (the small splits are not balanced), and a command row that can be pasted."""
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(run=dict(num_train_steps=3)), str(workdir))
  info = workdir / "run_info.jsonl"
  row = json.loads(info.read_text().splitlines()[0])
  row["argv"] = ["/x/fmnist_jax/main.py", "--config", "configs/tiny.py", "--workdir", "runs/a b"]
  info.write_text(json.dumps(row) + "\n")
  text = (report.write_report(str(workdir)) / "report.md").read_text()
  assert "1 evaluation; final step 3" in text
  assert "| command | `python -m fmnist_jax.main --config configs/tiny.py --workdir 'runs/a b'`" \
      in text
  counts = np.bincount(small_splits["train"][1], minlength=10)
  assert f"train: from {counts.min()} (" in text and "the classes are balanced" not in text


def test_an_interrupted_report_leaves_the_previous_one_whole(trained_workdir, monkeypatch):
  out = report.write_report(str(trained_workdir))
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  train.train_and_evaluate(tiny_config(run=dict(num_epochs=3), checkpoints=dict(keep=1)),
                           str(trained_workdir))

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(report, "plot_examples", interrupted)  # late in the report
  with pytest.raises(KeyboardInterrupt):
    report.write_report(str(trained_workdir))
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not a mix
  monkeypatch.undo()
  report.write_report(str(trained_workdir))  # the next one replaces the leftover
  assert not (trained_workdir / ".report.tmp").exists()
  assert (out / "report.md").exists()


@pytest.mark.parametrize("fault", ["full disk", "SIGTERM"])
def test_a_report_cut_short_says_so_in_one_line_and_leaves_no_temporary_folder(
    trained_workdir, monkeypatch, fault):
  """A full disk while the report is written is the report's line (the training is complete,
  not "run the same command again to resume"); a SIGTERM is one line too (it exited 143 with
  none); neither leaves .report.tmp holding the space."""
  import errno
  import os
  import signal

  def cut(*args, **kwargs):
    if fault == "SIGTERM":
      os.kill(os.getpid(), signal.SIGTERM)
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(report, "plot_examples", cut)  # late in the report
  expected = errors.DiskFullError if fault == "full disk" else errors.ReportError
  with pytest.raises(expected) as raised:
    report.write_report(str(trained_workdir))
  message = str(raised.value)
  assert "the training is complete and saved" in message and "resume" not in message
  assert f"python -m fmnist_jax.report --workdir {trained_workdir}" in message
  assert ("SIGTERM" in message) == (fault == "SIGTERM")
  assert not (trained_workdir / ".report.tmp").exists()
  assert signal.getsignal(signal.SIGTERM) is not None  # (the handler before it, back)


def test_the_console_keeps_the_projects_lines_not_a_checkouts_libraries():
  """A checkout named fmnist_jax holds .venv/: its libraries' paths contain /fmnist_jax/ too
  (a 10-step run printed 66 lines instead of 8)."""
  import logging
  import os
  from fmnist_jax import console
  package = os.path.dirname(os.path.abspath(report.__file__))
  checkout = os.path.dirname(package)
  quiet = console._QuietLibraries()

  def record(path, level=logging.INFO):
    return logging.LogRecord("x", level, path, 1, "a line", None, None)
  assert quiet.filter(record(os.path.join(package, "train.py")))
  assert quiet.filter(record(os.path.join(checkout, "benchmarks", "throughput.py")))
  library = os.path.join(os.sep, "home", "u", "fmnist_jax", ".venv", "lib", "python3.11",
                         "site-packages", "orbax", "checkpoint_manager.py")
  assert not quiet.filter(record(library))
  assert quiet.filter(record(library, logging.WARNING))
  for note in ("Attempted to create temporary directory /w/checkpoints/10.orbax-checkpoint-tmp "
               "which already exists", "Metadata file does not exist: /w/checkpoints/10"):
    kept = logging.LogRecord("x", logging.WARNING, library, 1, note, None, None)
    assert not quiet.filter(kept)  # (Orbax's notes on what a kill left)


@pytest.mark.slow
def test_the_report_is_written_while_the_run_holds_the_workdir(small_splits, tmp_path,
                                                              monkeypatch):
  """main writes the report before it releases the lock; the report command refuses a
  workdir that a run holds."""
  seen = []
  write = report.write_report

  def checking_write(workdir, *args, **kwargs):
    with pytest.raises(errors.ConfigError, match="is in use by another run"):
      workdir_lib.Lock(tmp_path / "run")
    seen.append(workdir)
    return write(workdir, *args, **kwargs)
  monkeypatch.setattr(report, "write_report", checking_write)
  main.train_and_report(tiny_config(run=dict(num_train_steps=6), logging=dict(write_report=True)),
                        str(tmp_path / "run"))
  assert seen and (tmp_path / "run" / "report" / "report.md").exists()
  held = workdir_lib.Lock(tmp_path / "run")
  try:
    result = subprocess.run([sys.executable, "-m", "fmnist_jax.report", "--workdir",
                             str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
  finally:
    held.release()
  assert result.returncode != 0 and "is in use by another run" in result.stderr
  assert "Traceback" not in result.stderr
  free = subprocess.run([sys.executable, "-m", "fmnist_jax.report", "--workdir",
                         str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert free.returncode == 0, free.stderr[-3000:]
  # Orbax's notes on normal use (checkpoints opened read-only) stay quiet, as in main.
  assert "read only" not in free.stderr and "WARNING:absl" not in free.stderr, free.stderr


def test_the_report_s_loss_is_the_training_loop_s(trained_workdir):
  # One definition: the report's test loss of the last checkpoint is metrics.jsonl's.
  report.write_report(str(trained_workdir))
  last = json.loads((trained_workdir / "report" / "metrics.json").read_text())
  last = last["checkpoints"]["last"]
  row = [r for r in workdir_lib.read_metrics(trained_workdir) if r["step"] == last["step"]][-1]
  assert last["loss"] == pytest.approx(row["test_loss"], rel=1e-5)


def test_a_confidently_wrong_model_s_loss_is_not_clipped():
  # A diverged member's logits put all mass on wrong classes: its loss is as large as the
  # training loop's (1e34 here), not a clipped probability's 27.6.
  log_probabilities = np.full((2, 10), -1e34, np.float32)
  log_probabilities[:, 3] = 0.0
  labels = np.array([0, 3])
  assert evaluate.nll(log_probabilities, labels) == pytest.approx(0.5e34)
  assert report.scores(log_probabilities, labels)["test_loss"] == pytest.approx(0.5e34)
  ensemble = evaluate.ensemble(np.stack([log_probabilities, np.log(np.full((2, 10), 0.1))]))
  assert np.exp(ensemble).sum(-1) == pytest.approx(1.0)
