"""Evaluation: the training loop's (every batch of every split dispatched, then one fetch and
host sums), and a saved checkpoint's over a whole split for the report (predictions,
classification report, confusion matrix, calibration). Never trains."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from fmnist_jax import checkpointing, models, population, steps
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.dataset import CLASS_NAMES
from fmnist_jax.errors import ReportError
from fmnist_jax.parallel import Parallelism


def dispatch(eval_fn, params, eval_sets: dict) -> dict[str, list]:
  """Every batch of every split dispatched, nothing fetched: {split: [metrics on device]}."""
  return {name: [eval_fn(params, batch) for batch in batches]
          for name, batches in eval_sets.items()}


def summarize(fetched: dict[str, list], counted=None) -> dict[str, dict]:
  """{split: {'loss', 'accuracy', 'count'}} from dispatch's metrics, fetched (summed in
  float64); `counted` (bools along the member axis): whose sums count (those that did not
  diverge)."""
  results = {}
  for name, metrics in fetched.items():
    sums = {key: sum(np.asarray(m[key], np.float64) for m in metrics) for key in metrics[0]}
    if counted is not None and np.any(counted):
      sums = {key: value[np.asarray(counted)] for key, value in sums.items()}
    loss, accuracy = steps.summarize(sums)
    # (a population: the members' mean; each member counts every example once)
    results[name] = {"loss": loss, "accuracy": accuracy, "count": int(np.max(sums["count"]))}
  return results


def restore_params(workdir: pathlib.Path, config, step: int | None = None):
  """(model, parameters, step) of `step`'s checkpoint (None: the latest): the members'
  (fmnist_jax.population) stacked on a leading member axis (one for a single run). The
  parameters are the EMA when the run kept one."""
  directory = pathlib.Path(workdir) / workdir_lib.CHECKPOINTS
  if not checkpointing.complete_steps(directory):  # (before anything is compiled)
    raise ReportError(f"{workdir} has no checkpoint in {directory}: nothing to evaluate. "
                      "Train at least one epoch first.")
  initial = population.initial_state(config, population.members(config), 1, 1,
                                     conv_impl="xla")  # the inference form, as trained
  state = Parallelism("jit", jax.devices()[:1]).place_state(initial)
  model = models.create_model(config, conv_impl="xla")
  ckpt = checkpointing.Checkpointer(directory, config, read_only=True)
  try:
    step = ckpt.latest_step() if step is None else step
    state, _ = ckpt.restore(step, state)
  finally:
    ckpt.close()
  return model, state.eval_params, step


def predict(model, params, images: np.ndarray, batch_size: int = 1000, *,
            flip_average: bool = False, translate: int = 0, per_pass: int = 0) -> np.ndarray:
  """Class log-probabilities [members, N, 10] of a population's stacked parameters (a single
  run: one member) for uint8 images: the training loop's eval logits, normalised (its loss is
  `nll` of them); `per_pass` members side by side per pass (population.over_members)."""
  @jax.jit
  def log_probabilities(params, batch):  # (params an argument: not baked into the program)
    def one(params):
      logits = models.inference_logits(model.apply, params, models.normalize(batch),
                                       flip_average=flip_average, translate=translate)
      return jax.nn.log_softmax(logits)
    return population.over_members(one, per_pass, params)
  return np.concatenate([np.asarray(log_probabilities(params, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)], axis=1)


def member_params(workdir: pathlib.Path, config, member_steps: list[int]):
  """(model, parameters stacked [members, ...]) of each member at its own checkpoint
  (`member_steps`: a step per member, e.g. each one's best by validation); each checkpoint
  restored once."""
  model, out = None, None
  for step in dict.fromkeys(member_steps):
    model, params, _ = restore_params(workdir, config, step=step)
    mine = np.flatnonzero(np.asarray(member_steps) == step)
    out = jax.tree.map(lambda x: np.zeros((len(member_steps), *x.shape[1:]), x.dtype),
                       params) if out is None else out
    for leaf, restored in zip(jax.tree.leaves(out), jax.tree.leaves(params)):
      leaf[mine] = np.asarray(restored)[mine]
  return model, out


def member_predictions(workdir: pathlib.Path, config, member_steps: list[int],
                       images: np.ndarray) -> np.ndarray:
  """Log-probabilities [members, N, 10] of each member at its own checkpoint
  (`member_params`), with the config's test-time augmentation."""
  model, params = member_params(workdir, config, member_steps)
  return predict(model, params, images, **models.tta_options(config),
                 per_pass=population.resolve_per_pass(config, jax.devices()[0].platform))


def member_steps(workdir: pathlib.Path, rows: list[dict], members: int, which: str):
  """The checkpoint step of each member: the latest (`last`), or the kept one of its highest
  validation accuracy (`best`; None without a validation split)."""
  kept = checkpointing.complete_steps(pathlib.Path(workdir) / workdir_lib.CHECKPOINTS)
  if which == "last":  # (None: no checkpoint, which restore_params says)
    return [kept[-1] if kept else None] * members
  mine = workdir_lib.by_member(rows)
  bests = [workdir_lib.best_by_val(mine.get(m, []), set(kept)) for m in range(members)]
  return None if None in bests else [best["step"] for best in bests]


def nll(log_probabilities: np.ndarray, labels: np.ndarray) -> float:
  """The mean negative log-likelihood of the labels: the loss of the training loop's
  evaluation (cross-entropy of its logits), unclipped, so a diverged model's is as large here
  as in metrics.jsonl."""
  picked = log_probabilities[np.arange(len(labels)), labels].astype(np.float64)
  return float(-np.mean(picked))


def ensemble(log_probabilities: np.ndarray) -> np.ndarray:
  """Members' [M, N, 10] log-probabilities -> their mean probabilities', as log-probabilities."""
  return np.logaddexp.reduce(log_probabilities.astype(np.float64), axis=0) - np.log(
      len(log_probabilities))


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          class_names=CLASS_NAMES) -> dict:
  """Per-class precision / recall / F1 / support, plus accuracy and macro / weighted averages."""
  from sklearn import metrics as skmetrics  # (the report's; not on the training path)
  return skmetrics.classification_report(labels, predictions, labels=range(len(class_names)),
                                         target_names=list(class_names), output_dict=True,
                                         zero_division=0)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10):
  """counts[true, predicted]."""
  from sklearn import metrics as skmetrics
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
  confidence = np.nan_to_num(confidence)  # (a diverged model's NaN: the lowest bin)
  index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
  count = np.bincount(index, minlength=bins)
  safe = np.maximum(count, 1)
  accuracy = np.bincount(index, weights=correct.astype(float), minlength=bins) / safe
  mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / safe
  ece = float(np.sum(count / max(len(confidence), 1) * np.abs(accuracy - mean_confidence)))
  return {"ece": ece, "bin_accuracy": accuracy.tolist(),
          "bin_confidence": mean_confidence.tolist(), "bin_count": count.tolist()}


def analyse(log_probabilities: np.ndarray, labels: np.ndarray,
            class_names=CLASS_NAMES) -> dict:
  """Everything the report shows of one model's (or an ensemble's) log-probabilities [N, 10] on
  a split."""
  predictions = log_probabilities.argmax(-1)
  confidence = np.exp(log_probabilities.max(-1))
  confusion = confusion_matrix(labels, predictions, len(class_names))
  report = classification_report(labels, predictions, class_names)
  f1 = {name: report[name]["f1-score"] for name in class_names}
  ranked = sorted(f1, key=f1.get)
  return {"accuracy": float(np.mean(predictions == labels)),
          "loss": nll(log_probabilities, labels), "count": int(len(labels)),
          "classification_report": report, "confusion_matrix": confusion.tolist(),
          "most_confused_pairs": most_confused_pairs(confusion, 5, class_names),
          "best_classes": ranked[::-1][:3], "worst_classes": ranked[:3],
          "calibration": calibration(confidence, predictions == labels),
          "predictions": predictions, "confidence": confidence}
