"""Metrics over a whole split: predictions, classification report, confusion matrix."""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import numpy as np
from sklearn import metrics as skmetrics

from fmnist_jax import checkpointing, input_pipeline, models, run_info, train
from fmnist_jax.dataset import CLASS_NAMES
from fmnist_jax.parallel import Parallelism


class ReportError(RuntimeError):
  """A workdir that cannot be reported on; the message says why."""


def load_workdir_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  path = workdir / "config.json"
  if not path.exists():
    raise ReportError(f"{workdir} has no config.json: it is not a fmnist_jax workdir "
                      "(train into it with `python -m fmnist_jax.main --workdir ...`).")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_metrics(workdir: pathlib.Path) -> list[dict]:
  """run_info.read_metrics, with an error when the run recorded no evaluation yet."""
  rows = run_info.read_metrics(workdir)
  if not rows:
    raise ReportError(f"{workdir} has no metrics.jsonl (or it is empty): the run recorded no "
                      "evaluation yet. Train at least one epoch first.")
  return rows


def restore_params(workdir: pathlib.Path, config, which: str = "last"):
  """Parameters of the latest ('last') or best-by-validation ('best') checkpoint, with its step."""
  model = models.create_model(config, conv_impl="xla")  # the inference form, as in training
  tx = train.create_optimizer(config, train.create_learning_rate_fn(config, 1, 1))
  state = Parallelism("jit", jax.devices()[:1]).replicate(
      train.create_train_state(config, model, tx))
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    raise ReportError(f"{workdir} has no checkpoints/ directory: nothing to evaluate.")
  ckpt = checkpointing.Checkpointer(directory, config, read_only=True)
  try:
    step = ckpt.best_step() if which == "best" else ckpt.manager.latest_step()
    if step is None:
      raise ReportError(f"{directory} holds no {which} checkpoint"
                        + (" (best needs validation metrics: validation_size > 0)."
                           if which == "best" else "."))
    state = ckpt.restore(step, state)
  finally:
    ckpt.close()
  return model, state.eval_params, step  # the EMA when the run kept one


def predict(model, params, images: np.ndarray, batch_size: int = 1000, *,
            flip_average: bool = False) -> np.ndarray:
  """Class probabilities [N, 10] for uint8 images (the same logits as the training loop's eval)."""
  @jax.jit
  def probabilities(batch):
    logits = models.inference_logits(model.apply, params, input_pipeline.normalize(batch),
                                     flip_average=flip_average)
    return jax.nn.softmax(logits)
  return np.concatenate([np.asarray(probabilities(images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          class_names=CLASS_NAMES) -> dict:
  """Per-class precision / recall / F1 / support, plus accuracy and macro / weighted averages."""
  return skmetrics.classification_report(labels, predictions, labels=range(len(class_names)),
                                         target_names=list(class_names), output_dict=True,
                                         zero_division=0)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10):
  """counts[true, predicted]."""
  return skmetrics.confusion_matrix(labels, predictions, labels=range(num_classes))


def most_confused_pairs(confusion: np.ndarray, count: int = 5, class_names=CLASS_NAMES):
  """The largest off-diagonal cells: (true class, predicted class, number of examples)."""
  off_diagonal = confusion.copy()
  np.fill_diagonal(off_diagonal, 0)
  order = np.argsort(off_diagonal, axis=None)[::-1][:count]
  return [(class_names[i], class_names[j], int(off_diagonal[i, j]))
          for i, j in zip(*np.unravel_index(order, confusion.shape))]


def evaluate_split(model, params, images, labels, class_names=CLASS_NAMES, *,
                   flip_average: bool = False) -> dict:
  """Everything the report shows about one checkpoint on one split."""
  probabilities = predict(model, params, images, flip_average=flip_average)
  predictions = probabilities.argmax(-1)
  confidence = probabilities.max(-1)
  loss = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels],
                                       1e-12, None))))
  confusion = confusion_matrix(labels, predictions, len(class_names))
  report = classification_report(labels, predictions, class_names)
  f1 = {name: report[name]["f1-score"] for name in class_names}
  ranked = sorted(f1, key=f1.get)
  return {"accuracy": float(np.mean(predictions == labels)), "loss": loss,
          "count": int(len(labels)), "classification_report": report,
          "confusion_matrix": confusion.tolist(),
          "most_confused_pairs": most_confused_pairs(confusion, 5, class_names),
          "best_classes": ranked[::-1][:3], "worst_classes": ranked[:3],
          "predictions": predictions, "confidence": confidence}
