"""Metrics of a saved checkpoint over a whole split: predictions, classification report,
confusion matrix. Reads a workdir (fmnist_jax.workdir) and its checkpoints; never trains."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from sklearn import metrics as skmetrics

from fmnist_jax import checkpointing, models, state as state_lib, workdir as workdir_lib
from fmnist_jax.dataset import CLASS_NAMES
from fmnist_jax.errors import ReportError  # re-exported: evaluate.ReportError
from fmnist_jax.parallel import Parallelism


def restore_params(workdir: pathlib.Path, config, which: str = "last"):
  """Parameters of the latest ('last') or best-by-validation ('best') checkpoint, with its step."""
  workdir = pathlib.Path(workdir)
  directory = workdir / workdir_lib.CHECKPOINTS
  if not directory.is_dir():  # (before anything is compiled)
    raise ReportError(f"{workdir} has no checkpoints/ directory: nothing to evaluate.")
  state = Parallelism("jit", jax.devices()[:1]).replicate(
      state_lib.initial_state(config, conv_impl="xla"))  # the inference form, as in training
  model = models.create_model(config, conv_impl="xla")
  ckpt = checkpointing.Checkpointer(directory, config, read_only=True)
  try:
    step = ckpt.best_step() if which == "best" else ckpt.latest_step()
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
  def probabilities(params, batch):  # (params an argument: not baked into the program)
    logits = models.inference_logits(model.apply, params, models.normalize(batch),
                                     flip_average=flip_average)
    return jax.nn.softmax(logits)
  return np.concatenate([np.asarray(probabilities(params, images[i:i + batch_size]))
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


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict:
  """Expected calibration error (Guo et al., 2017): the mean over equal-width confidence bins
  of |accuracy - mean confidence|, weighted by the bin's share of examples; with the bins'
  accuracy, confidence and count for a reliability diagram."""
  index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
  count = np.bincount(index, minlength=bins)
  safe = np.maximum(count, 1)
  accuracy = np.bincount(index, weights=correct.astype(float), minlength=bins) / safe
  mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / safe
  ece = float(np.sum(count / max(len(confidence), 1) * np.abs(accuracy - mean_confidence)))
  return {"ece": ece, "bin_accuracy": accuracy.tolist(),
          "bin_confidence": mean_confidence.tolist(), "bin_count": count.tolist()}


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
          "calibration": calibration(confidence, predictions == labels),
          "predictions": predictions, "confidence": confidence}
