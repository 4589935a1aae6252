"""Distillation (Hinton et al., 2015): a run that learns from a finished run's ensemble too.

`distill.teacher` names a finished workdir, a single run or a population; the teacher is the
ensemble (mean probability) of its members that did not diverge, each at its best checkpoint
by validation, restored and predicted through `evaluate`'s one path, and never updated. The
student's loss is (1 - w) * CE(labels) + w * T^2 * KL(teacher_T || student_T)
(steps.distillation_loss). The teacher sees the data one of two ways (`distill.teacher_sees`):
"precomputed", its predictions on the training images computed once at start and gathered with
each batch (the student's shifts and flips are not the teacher's), or "on_the_fly", its
members' forward passes on each augmented batch inside the student's step.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import evaluate, models, population, steps, workdir as workdir_lib
from fmnist_jax.errors import ConfigError, FmnistError

MODES = ("precomputed", "on_the_fly")


@dataclasses.dataclass
class Teacher:
  """A finished run's healthy members at their best checkpoints, ready to predict."""
  workdir: str
  config: Any
  members: list[int]
  steps: list[int]
  model: Any
  params: Any  # host arrays, stacked on a leading member axis
  # Set by `describe`: the test split's (images, labels), the ensemble's log-probabilities of
  # them, and result.json's `distill`.
  test: Any = None
  test_log_probs: Any = None
  summary: dict | None = None

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Each member's log-probabilities [members, N, 10], with the teacher's test-time
    augmentation."""
    return evaluate.predict(self.model, self.params, images, **models.tta_options(self.config),
                            per_pass=_per_pass(self.config))


def _per_pass(config) -> int:
  return population.resolve_per_pass(config, jax.devices()[0].platform)


def _refuse(message: str):
  raise ConfigError(f"distill.teacher: {message}")


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())[:160]


def check(config) -> Teacher | None:
  """The config's teacher, restored, or one ConfigError line; None without one. Reads no data
  and writes nothing."""
  d = config.distill
  if not d.teacher:
    return None
  if not (isinstance(d.temperature, (int, float)) and math.isfinite(d.temperature)
          and d.temperature > 0):
    raise ConfigError(f"distill.temperature={d.temperature!r} must be a number > 0 (2 to 5 "
                      "is usual; 1 leaves the teacher's probabilities as they are).")
  if not 0 <= d.weight <= 1:
    raise ConfigError(f"distill.weight={d.weight!r} is the soft targets' share of the loss: "
                      "give a value in [0, 1].")
  if d.teacher_sees not in MODES:
    raise ConfigError(f"distill.teacher_sees={d.teacher_sees!r} is not one of {MODES}.")
  if d.teacher_sees == "precomputed" and config.data.input_mode == "tfds":
    raise ConfigError("distill.teacher_sees='precomputed' gathers the teacher's predictions "
                      "by image on the device: use data.input_mode=device, or "
                      "distill.teacher_sees=on_the_fly with tfds streaming.")
  path = pathlib.Path(d.teacher).expanduser()
  if not path.is_dir():
    _refuse(f"{d.teacher} does not exist: name the --workdir of a finished run.")
  try:
    recorded = workdir_lib.read_config(path)
    rows = workdir_lib.read_metrics(path, required=True)
  except (FmnistError, OSError) as e:
    _refuse(str(e))
  if not workdir_lib.result_is_current(path, max(r["step"] for r in rows)):
    _refuse(f"{d.teacher} is not a finished run (its result.json names its last step when it "
            "is): finish it first (run its command again to resume it).")
  if recorded.data.validation_size != config.data.validation_size:
    _refuse(f"{d.teacher} held out data.validation_size={recorded.data.validation_size}, this "
            f"run {config.data.validation_size}: the teacher has fitted images this run "
            "selects its checkpoints on. Use a teacher trained with the same split.")
  if recorded.model.num_classes != config.model.num_classes:
    _refuse(f"{d.teacher} predicts {recorded.model.num_classes} classes, this run "
            f"{config.model.num_classes}.")
  return _restore(path, recorded, rows)


def _restore(path: pathlib.Path, recorded, rows: list[dict]) -> Teacher:
  found = population.members(recorded)
  healthy = next(iter(population.ensembles(recorded, found, rows).values()))
  chosen = (evaluate.member_steps(path, rows, len(found), "best")
            or evaluate.member_steps(path, rows, len(found), "last"))
  try:
    model, params = evaluate.member_params(path, recorded, [chosen[m] for m in healthy])
  except (FmnistError, ValueError, OSError) as e:  # (Orbax's reads of damaged files)
    _refuse(f"{path} cannot be restored ({_one_line(e)}): retrain it, or name another run.")
  try:
    shape = jax.eval_shape(lambda p: models.inference_logits(
        model.apply, p, jnp.zeros((1, 28, 28, 1))), jax.tree.map(lambda x: x[0], params)).shape
  except (TypeError, ValueError) as e:
    _refuse(f"{path}'s parameters do not take 28x28x1 images ({_one_line(e)}).")
  if shape != (1, recorded.model.num_classes):
    _refuse(f"{path}'s model gives outputs of shape {shape}, not "
            f"(1, {recorded.model.num_classes}).")
  return Teacher(str(path), recorded, healthy, [chosen[m] for m in healthy], model, params)


def step_options(config, teacher: Teacher | None, options: steps.StepOptions):
  """The step's options with the teacher's: its forward pass when it sees each batch."""
  if teacher is None:
    return options
  on_the_fly = config.distill.teacher_sees == "on_the_fly"
  return dataclasses.replace(
      options, distill=True, distill_weight=float(config.distill.weight),
      temperature=float(config.distill.temperature),
      teacher=ensemble_fn(teacher) if on_the_fly else None)


def ensemble_fn(teacher: Teacher):
  """(stacked parameters, normalized images) -> the members' ensemble log-probabilities, as
  `Teacher.predict` and `evaluate.ensemble` compute them, on the device."""
  tta = models.tta_options(teacher.config)
  per_pass = _per_pass(teacher.config)
  model = models.create_model(teacher.config)  # (the training form: faster in a step on CPU)

  def log_probabilities(params, images):
    def one(params):
      return jax.nn.log_softmax(models.inference_logits(model.apply, params, images, **tta))
    members = population.over_members(one, per_pass, params)
    return jax.nn.logsumexp(members, axis=0) - jnp.log(members.shape[0])
  return log_probabilities


def train_targets(config, teacher: Teacher | None, images: np.ndarray) -> dict:
  """What the training split carries for the step: the teacher's ensemble log-probabilities
  of each image when they are precomputed."""
  if teacher is None or config.distill.teacher_sees != "precomputed":
    return {}
  return {"teacher": evaluate.ensemble(teacher.predict(images)).astype(np.float32)}


def describe(config, teacher: Teacher, test: tuple[np.ndarray, np.ndarray]) -> None:
  """The teacher's `summary` (result.json's `distill`): the settings, the teacher and its test
  accuracy, each member's and its ensemble's."""
  images, labels = test
  members = teacher.predict(images)
  teacher.test, teacher.test_log_probs = test, evaluate.ensemble(members)
  teacher.summary = {
      **config.distill.to_dict(), "members": teacher.members, "steps": teacher.steps,
      "teacher_test_accuracy": population.mean_std([np.mean(m.argmax(-1) == labels)
                                                    for m in members]),
      "teacher_ensemble_test_accuracy": float(np.mean(
          teacher.test_log_probs.argmax(-1) == labels))}


def result(config, teacher: Teacher | None, model, params) -> dict:
  """result.json's `distill` for the student's (host) parameters: the teacher's summary and how
  often each member's test prediction is the teacher ensemble's (its [mean, std])."""
  if teacher is None:
    return {}
  students = evaluate.predict(model, params, teacher.test[0], **models.tta_options(config),
                              per_pass=_per_pass(config))
  chosen = teacher.test_log_probs.argmax(-1)
  return {"distill": {**teacher.summary, "test_agreement": population.mean_std(
      [np.mean(m.argmax(-1) == chosen) for m in students])}}
