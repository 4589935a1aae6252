"""Distillation (fmnist_jax.distill): the loss, the step, the teacher untouched, a population of
students, and the refusals."""

import hashlib
import json
import shutil

import jax
import numpy as np
import pytest

from conftest import tiny_config
from fmnist_jax import distill, input_pipeline, population, steps, train
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.errors import ConfigError
from test_train import EXACT_STEP, exact_step_numbers


def test_weight_zero_gives_the_plain_runs_stored_one_step_numbers():
  """With weight 0 the soft targets add exactly nothing: the stored one-step numbers."""
  rng = np.random.default_rng(0)
  teacher = jax.nn.log_softmax(rng.normal(size=(8, 10)).astype(np.float32))
  options = steps.StepOptions(distill=True, distill_weight=0.0, temperature=4.0)
  got = exact_step_numbers(options, {"teacher": teacher})
  assert got["correct"] == EXACT_STEP["correct"]
  for key in ("loss", "param_abs_sum", "conv1_kernel_00", "logits_bias"):
    np.testing.assert_allclose(got[key], EXACT_STEP[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_the_loss_on_stored_logits_equals_the_formula():
  """(1 - w) CE + w T^2 KL(teacher_T || student_T), by hand in float64 on stored logits."""
  student = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
  teacher_logp = np.log(np.array([[0.7, 0.1, 0.2], [0.05, 0.15, 0.8]]))
  labels, w, t = np.array([0, 2]), 0.75, 3.0

  def log_softmax(x):
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
  ce = -log_softmax(student)[np.arange(2), labels]
  p = np.exp(log_softmax(teacher_logp / t))
  kl = (p * (np.log(p) - log_softmax(student / t))).sum(-1)
  want = (1 - w) * ce + w * t * t * kl
  got = steps.distillation_loss(student.astype(np.float32),
                                steps.cross_entropy(student.astype(np.float32), labels),
                                teacher_logp.astype(np.float32), w, t)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert want[0] > 0 and not np.allclose(want, ce)  # (the soft part is not zero here)


def _tree_digest(directory):
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _student(teacher, sees="on_the_fly", **sections):
  """configs/tiny.py, 4 steps, shifted and flipped images, learning from `teacher`."""
  return tiny_config(**{"run": dict(num_train_steps=4), "parallelism": dict(steps_per_call=2),
                        "augment": dict(translate=1, flip="random"),
                        "distill": dict(teacher=str(teacher), teacher_sees=sees,
                                        temperature=2.0, weight=0.5), **sections})


def test_the_teacher_is_never_updated(trained_workdir, tmp_path):
  """A wider student trains on the fly (the teacher's parameters an argument of every call):
  the teacher's files are byte for byte as they were, and what it predicts too."""
  before = _tree_digest(trained_workdir)
  config = _student(trained_workdir, model=dict(conv_features=(8, 16, 16)))
  teacher = distill.check(config)
  result = train.train_and_evaluate(config, str(tmp_path / "student"))
  assert _tree_digest(trained_workdir) == before
  again = distill.check(config)
  for a, b in zip(jax.tree.leaves(teacher.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)
  written = workdir_lib.read_result(tmp_path / "student")["distill"]
  assert written["teacher"] == str(trained_workdir) and written["members"] == [0]
  assert 0 <= written["test_agreement"][0] <= 1 and result["test_count"] > 0


def test_the_report_and_compare_name_the_teacher(trained_workdir, tmp_path):
  from fmnist_jax import compare, report
  train.train_and_evaluate(_student(trained_workdir), str(tmp_path / "student"))
  report.write_report(str(tmp_path / "student"))
  headline = (tmp_path / "student" / "report" / "report.md").read_text()
  assert f"| teacher | `{trained_workdir}`: the ensemble of 1 member(s)" in headline
  compare.compare([str(tmp_path / "student")], str(tmp_path / "compare"))
  lined_up = json.loads((tmp_path / "compare" / "compare.json").read_text())
  assert set(lined_up) == {"student", "run"}  # (the teacher, added)


def test_precomputed_and_on_the_fly_agree_without_augmentation(trained_workdir, tmp_path):
  """Without augmentation the teacher sees the same images either way: the same student."""
  checksums = []
  for sees in distill.MODES:
    config = _student(trained_workdir, sees, augment=dict(translate=0, flip="off"))
    row = train.train_and_evaluate(config, str(tmp_path / sees))
    checksums.append((row["train_loss"], row["test_loss"]))
  np.testing.assert_allclose(checksums[0], checksums[1], rtol=1e-5)


def test_a_population_of_students_equals_each_student_trained_alone(trained_workdir, tmp_path):
  config = _student(trained_workdir, population=dict(members=(("run.seed", (0, 1)),)))
  train.train_and_evaluate(config, str(tmp_path / "population"))
  rows = {r["member"]: r for r in workdir_lib.read_metrics(tmp_path / "population")}
  for index, member in enumerate(population.members(config)):
    alone = train.train_and_evaluate(population.member_config(config, member),
                                     str(tmp_path / f"alone{index}"))
    for key in ("train_loss", "test_loss", "val_loss"):
      np.testing.assert_allclose(rows[index][key], alone[key], rtol=1e-5, err_msg=key)


def _unfinished(workdir):
  (workdir / workdir_lib.RESULT_FILE).unlink()


def _damaged(workdir):
  for path in (workdir / workdir_lib.CHECKPOINTS).rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:8])


def _other_split(workdir):
  path = workdir / workdir_lib.CONFIG_FILE
  recorded = json.loads(path.read_text())
  recorded["data"]["validation_size"] = 80
  path.write_text(json.dumps(recorded))


def _other_classes(workdir):
  path = workdir / workdir_lib.CONFIG_FILE
  recorded = json.loads(path.read_text())
  recorded["model"]["num_classes"] = 5
  path.write_text(json.dumps(recorded))


REFUSALS = {
    "missing": (lambda w: shutil.rmtree(w), {}, "does not exist"),
    "unfinished": (_unfinished, {}, "not a finished run"),
    "damaged": (_damaged, {}, "cannot be restored"),
    "other validation split": (_other_split, {}, "validation_size=80"),
    "other classes": (_other_classes, {}, "predicts 5 classes"),
    "temperature 0": (None, {"distill.temperature": 0.0}, "must be a number > 0"),
    "weight above 1": (None, {"distill.weight": 1.5}, r"in \[0, 1\]"),
    "precomputed with tfds": (None, {"data.input_mode": "tfds",
                                     "distill.teacher_sees": "precomputed"}, "input_mode=device"),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_a_teacher_or_setting_that_cannot_teach_is_refused_in_one_line(trained_workdir, tmp_path,
                                                                        monkeypatch, name):
  """One line naming what to change, before the data is read and before a workdir is made."""
  def unread(config):
    raise AssertionError("the data was read")
  monkeypatch.setattr(input_pipeline, "load_splits", unread)
  spoil, changes, words = REFUSALS[name]
  if spoil:
    spoil(trained_workdir)
  config = _student(trained_workdir)
  for path, value in changes.items():
    section, field = path.split(".")
    config[section][field] = value
  with pytest.raises(ConfigError, match=words) as refused:
    train.setup(config, str(tmp_path / "student"))
  assert "\n" not in str(refused.value)
  assert not (tmp_path / "student").exists()
