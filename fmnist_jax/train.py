"""Training and evaluation: state, pure step functions, and the loop.

Reads top to bottom: config checks -> optimizer -> state -> steps -> train_and_evaluate.
The steps are plain functions of arrays; `parallel.Parallelism` compiles them for jit or pmap.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from flax.training import train_state

from fmnist_jax import checkpointing
from fmnist_jax import input_pipeline
from fmnist_jax import models
from fmnist_jax import run_info
from fmnist_jax.configuration import validate_config
from fmnist_jax.parallel import Parallelism


# --- optimizer --------------------------------------------------------------------------------

def create_learning_rate_fn(config, steps_per_epoch: int, total_steps: int):
  if config.schedule == "constant":
    return optax.constant_schedule(config.learning_rate)
  if config.schedule == "cosine":
    return optax.cosine_decay_schedule(config.learning_rate, total_steps)
  warmup = int(config.warmup_epochs * steps_per_epoch)
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                            max(total_steps, warmup + 1))


def create_optimizer(config, learning_rate_fn) -> optax.GradientTransformation:
  if config.optimizer == "adam":
    return optax.adam(learning_rate_fn)
  if config.optimizer == "adamw":
    return optax.adamw(learning_rate_fn, weight_decay=config.weight_decay)
  return optax.sgd(learning_rate_fn, momentum=config.momentum, nesterov=True)


# --- state ------------------------------------------------------------------------------------

class TrainState(train_state.TrainState):
  """Flax TrainState plus the base dropout key; step keys are fold_in(dropout_key, step)."""
  dropout_key: jax.Array


def create_train_state(config, model, tx, image_shape=(28, 28, 1)) -> TrainState:
  """The initial state, on the host. Parameters and dropout key both derive from config.seed."""
  params_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1,) + image_shape), train=False))(
      params_key)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           dropout_key=dropout_key)


# --- steps ------------------------------------------------------------------------------------

def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state: TrainState, batch, *, axis_name=None):
  """One optimizer step on `batch` {'image': uint8 [B,28,28,1], 'label': int [B]}.

  Under pmap (axis_name given) the batch is this device's shard: gradients are averaged and
  metrics summed over the axis, and each device folds its index into the dropout key.
  Returns the new state and summed metrics {'loss', 'correct', 'count'}.
  """
  step_key = jax.random.fold_in(state.dropout_key, state.step)
  if axis_name is not None:
    step_key = jax.random.fold_in(step_key, jax.lax.axis_index(axis_name))
  images = input_pipeline.normalize(batch["image"])
  labels = batch["label"]

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, images, train=True,
                            rngs={"dropout": step_key})
    return cross_entropy(logits, labels).mean(), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  metrics = {"loss": loss * labels.shape[0],
             "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
             "count": jnp.asarray(labels.shape[0], jnp.int32)}
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return state.apply_gradients(grads=grads), metrics


def train_steps(state: TrainState, batches, *, axis_name=None):
  """Several train steps in one call: `batches` has a leading steps axis. Metrics are summed."""
  num_steps = jax.tree.leaves(batches)[0].shape[0]
  if num_steps == 1:  # No scan: XLA's CPU convolutions are much slower inside a loop.
    return train_step(state, jax.tree.map(lambda x: x[0], batches), axis_name=axis_name)

  def body(state, batch):
    return train_step(state, batch, axis_name=axis_name)
  state, metrics = jax.lax.scan(body, state, batches)
  return state, jax.tree.map(lambda m: m.sum(0), metrics)


def eval_step(state_or_params, batch, *, apply_fn=None, axis_name=None):
  """Summed loss / correct / count over the unmasked examples of `batch`."""
  params = state_or_params
  logits = apply_fn({"params": params}, input_pipeline.normalize(batch["image"]), train=False)
  mask = batch["mask"]
  metrics = {"loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
             "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
             "count": jnp.sum(mask)}
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return metrics


def summarize(sums: dict[str, Any]) -> tuple[float, float]:
  """(mean loss, accuracy) from summed metrics."""
  count = float(sums["count"])
  return float(sums["loss"]) / count, float(sums["correct"]) / count


def host_sum(par: Parallelism, metrics_list) -> dict[str, Any]:
  """Sums per-call metrics on the host. No eager ops on global arrays: with several processes,
  extra device computations between the compiled steps can interleave their collectives."""
  sums = {}
  for metrics in par.to_host(list(metrics_list)):
    for key, value in metrics.items():
      sums[key] = sums.get(key, 0) + np.asarray(value, np.float64)
  return sums


def evaluate(eval_fn, params, batches, par: Parallelism) -> dict[str, float]:
  sums = host_sum(par, [eval_fn(params, batch) for batch in batches])
  loss, accuracy = summarize(sums)
  return {"loss": loss, "accuracy": accuracy, "count": int(sums["count"])}


# --- the loop ---------------------------------------------------------------------------------

class JsonlWriter(metric_writers.MetricWriter):
  """clu writer appending one JSON object per write_scalars call (the evaluations)."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step, scalars):
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: _py(v) for k, v in scalars.items()}}) + "\n")

  def write_summaries(self, step, values, metadata=None): pass
  def write_images(self, step, images): pass
  def write_videos(self, step, videos): pass
  def write_audios(self, step, audios, *, sample_rate): pass
  def write_texts(self, step, texts): pass
  def write_histograms(self, step, arrays, num_buckets=None): pass
  def write_hparams(self, hparams): pass
  def flush(self): pass
  def close(self): pass


def _py(value):
  value = np.asarray(value).item()
  return value


def _crossed(step: int, num_steps: int, every: int) -> bool:
  """Whether the last call (num_steps steps, ending at `step`) passed a multiple of `every`."""
  return step // every != (step - num_steps) // every


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains, evaluates after every epoch and at the end, checkpoints; returns the last eval."""
  # --- setup: everything that can fail on bad input fails here, before any compilation -------
  validate_config(config)
  par = Parallelism(config.parallelism)
  par.check_batch_size(config.batch_size, "batch_size")
  par.check_batch_size(config.eval_batch_size, "eval_batch_size")
  workdir_path = run_info.prepare_workdir(workdir)
  is_chief = jax.process_index() == 0

  splits = input_pipeline.load_splits(config)
  train_data = input_pipeline.create_train_data(config, par, splits)
  steps_per_epoch = train_data.steps_per_epoch
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {config.batch_size} is larger than the training split "
                     f"({len(splits['train'][0])} examples).")
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  eval_sets = {name: input_pipeline.eval_batches(*splits[name], par, config.eval_batch_size)
               for name in ("val", "test") if name in splits}

  model = models.create_model(config)
  tx = create_optimizer(config, create_learning_rate_fn(config, steps_per_epoch, total_steps))
  state = par.replicate(create_train_state(config, model, tx))
  ckpt = checkpointing.Checkpointer(workdir_path / "checkpoints", config)
  state = ckpt.restore_latest(state)
  start_step = int(par.to_host(state.step))
  if is_chief:
    run_info.record(workdir_path, config, par, steps_per_epoch=steps_per_epoch,
                    total_steps=total_steps, start_step=start_step)
    logging.info("%s; %d steps/epoch, %d steps in all; starting at step %d", par,
                 steps_per_epoch, total_steps, start_step)

  writer = metric_writers.MultiWriter(
      [metric_writers.create_default_writer(str(workdir_path), just_logging=not is_chief)] +
      ([JsonlWriter(str(workdir_path / "metrics.jsonl"))] if is_chief else []))
  train_fn = par.compile_train(train_steps)
  eval_model = models.create_model(config, conv_impl="xla")  # same parameters, faster inference
  eval_fn = par.compile_eval(
      lambda params, batch, axis_name: eval_step(params, batch, apply_fn=eval_model.apply,
                                                 axis_name=axis_name))

  # --- loop ---------------------------------------------------------------------------------
  step = start_step
  last_eval = {}
  epoch_metrics = []  # per-call metrics, left on the device until they are read
  timer_step, timer_start, run_start = step, time.perf_counter(), time.perf_counter()
  while step < total_steps:
    epoch, first = divmod(step, steps_per_epoch)
    # Calls never cross an epoch end or the last step, so evaluations happen exactly there.
    steps_left_in_epoch = min(steps_per_epoch, first + total_steps - step) - first
    for batches in train_data.batches(epoch, first, config.steps_per_call):
      num = jax.tree.leaves(batches)[0].shape[0]
      num = min(num, steps_left_in_epoch)
      if num < jax.tree.leaves(batches)[0].shape[0]:
        batches = jax.tree.map(lambda x: x[:num], batches)
      state, metrics = train_fn(state, batches)
      epoch_metrics.append(metrics)
      if len(epoch_metrics) > 2:  # the host runs at most two calls ahead of the devices
        jax.block_until_ready(epoch_metrics[-3])
      step += num
      steps_left_in_epoch -= num
      if _crossed(step, num, config.log_every_steps):
        loss, accuracy = summarize(host_sum(par, epoch_metrics))
        now = time.perf_counter()
        images_per_second = (step - timer_step) * config.batch_size / (now - timer_start)
        eta = (total_steps - step) * config.batch_size / max(images_per_second, 1e-9)
        logging.info("step %d/%d epoch %d | train loss %.4f acc %.4f | %s img/s | ETA %s",
                     step, total_steps, epoch + 1, loss, accuracy,
                     f"{images_per_second:,.0f}", _format_seconds(eta))
        timer_step, timer_start = step, now
      end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
      if end_of_epoch:
        break
      if _crossed(step, num, config.checkpoint_every_steps):
        ckpt.save(step, state)

    # --- evaluation: after every epoch and at the end -----------------------------------------
    train_loss, train_accuracy = summarize(host_sum(par, epoch_metrics))
    epoch_metrics = []
    scalars = {"epoch": step / steps_per_epoch, "train_loss": train_loss,
               "train_accuracy": train_accuracy}
    for name, batches in eval_sets.items():
      result = evaluate(eval_fn, state.params, batches, par)
      scalars[f"{name}_loss"], scalars[f"{name}_accuracy"] = result["loss"], result["accuracy"]
      scalars[f"{name}_count"] = result["count"]
    scalars["elapsed_seconds"] = time.perf_counter() - run_start
    writer.write_scalars(step, scalars)
    writer.flush()
    logging.info("epoch %.2f step %d | %s", scalars["epoch"], step,
                 " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in scalars.items() if k != "epoch"))
    ckpt.save(step, state, metrics=scalars)
    last_eval = scalars
    timer_step, timer_start = step, time.perf_counter()

  # Every process logs this: processes that disagree on the parameters show it here.
  checksum = sum(float(np.abs(x).sum()) for x in jax.tree.leaves(par.to_host(state.params)))
  logging.info("process %d: finished at step %d, parameter checksum %.10g",
               jax.process_index(), step, checksum)
  ckpt.close()
  writer.close()
  if config.write_report and is_chief:
    if jax.process_count() == 1:
      from fmnist_jax import report  # matplotlib and scikit-learn only when needed
      logging.info("report written to %s", report.write_report(str(workdir_path), splits))
    else:
      logging.info("multi-process run: write the report with "
                   "`python -m fmnist_jax.report --workdir %s`", workdir_path)
  return last_eval
