"""Training and evaluation: state, pure step functions, and the loop.

Reads top to bottom: config checks -> optimizer -> state -> steps -> train_and_evaluate.
The steps are plain functions of arrays; `parallel.Parallelism` compiles them for jit or pmap.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from flax.training import train_state

from fmnist_jax import augment
from fmnist_jax import checkpointing
from fmnist_jax import input_pipeline
from fmnist_jax import models
from fmnist_jax import run_info
from fmnist_jax.configuration import ConfigError, validate_config
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
    tx = optax.adam(learning_rate_fn)
  elif config.optimizer == "adamw":
    tx = optax.adamw(learning_rate_fn, weight_decay=config.weight_decay)
  else:
    tx = optax.sgd(learning_rate_fn, momentum=config.momentum, nesterov=True)
  if config.get("skip_nonfinite_updates", False):
    # Drops updates whose gradients hold a NaN/inf; gives up after 5 in a row.
    tx = optax.apply_if_finite(tx, max_consecutive_errors=5)
  return tx


# --- state ------------------------------------------------------------------------------------

class TrainState(train_state.TrainState):
  """Flax TrainState plus the base dropout key (step keys are fold_in(dropout_key, step)) and,
  when config.ema_decay > 0, an exponential moving average of the parameters."""
  dropout_key: jax.Array
  ema_params: Any = None

  @property
  def eval_params(self):
    """The parameters to evaluate and report: the EMA when there is one."""
    return self.params if self.ema_params is None else self.ema_params


def create_train_state(config, model, tx, image_shape=(28, 28, 1)) -> TrainState:
  """The initial state, on the host. Parameters and dropout key both derive from config.seed."""
  params_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1,) + image_shape), train=False))(
      params_key)
  params = variables["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx, dropout_key=dropout_key,
                           ema_params=params if config.get("ema_decay", 0.0) else None)


# --- steps ------------------------------------------------------------------------------------

def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """What a train step does besides a plain gradient step. Defaults: the seed recipe."""
  microbatches: int = 1          # gradient summed over equal chunks of the batch (same update)
  label_smoothing: float = 0.0
  ema_decay: float = 0.0         # > 0: also update TrainState.ema_params
  translate: int = 0             # augmentation (fmnist_jax.augment), on device
  flip: bool = False
  erase_size: int = 0
  erase_prob: float = 0.0

  @classmethod
  def from_config(cls, config, num_devices: int = 1, platform: str = "cpu") -> "StepOptions":
    return cls(microbatches=resolve_microbatches(config, num_devices, platform),
               label_smoothing=config.label_smoothing,
               ema_decay=config.ema_decay, translate=config.augment_translate,
               flip=config.augment_flip, erase_size=config.augment_erase_size,
               erase_prob=config.augment_erase_prob)

  @property
  def augments(self) -> bool:
    return bool(self.translate or self.flip or (self.erase_size and self.erase_prob))


def resolve_microbatches(config, num_devices: int, platform: str) -> int:
  """config.microbatches; 0 ("auto") means chunks of 32 images on CPU, where cache-sized chunks
  train ~1.2x faster (benchmarks/results/), and the whole batch on GPU/TPU. The chunking
  depends on the global batch only, so results stay the same on any device count."""
  if config.microbatches:
    return config.microbatches
  chunk = 32
  if platform == "cpu" and config.batch_size % chunk == 0 and chunk % num_devices == 0:
    return config.batch_size // chunk
  return 1


AUGMENT_STREAM = 1  # fold_in(step_key, AUGMENT_STREAM): augmentation draws, apart from dropout's


def train_step(state: TrainState, batch, *, axis_name=None, options=StepOptions()):
  """One optimizer step on `batch` {'image': uint8 [B,28,28,1], 'label': int [B]}.

  Under pmap (axis_name given) the batch is this device's shard: gradients are averaged and
  metrics summed over the axis, and each device folds its index into the dropout key.
  With options.microbatches = m the batch is processed as m interleaved chunks (example i in
  chunk i mod m, so every chunk is spread over all devices) whose gradients are averaged: the
  whole batch's gradient with less memory traffic; dropout then draws per chunk.
  Returns the new state and summed metrics {'loss', 'correct', 'count', 'nonfinite'}.
  """
  step_key = jax.random.fold_in(state.dropout_key, state.step)
  if axis_name is not None:
    step_key = jax.random.fold_in(step_key, jax.lax.axis_index(axis_name))
  images, labels = batch["image"], batch["label"]
  if options.augments:
    images = augment.augment(jax.random.fold_in(step_key, AUGMENT_STREAM), images,
                             translate=options.translate, flip=options.flip,
                             erase_size=options.erase_size, erase_prob=options.erase_prob)
  images = input_pipeline.normalize(images)

  def loss_fn(params, images, labels, key):
    logits = state.apply_fn({"params": params}, images, train=True, rngs={"dropout": key})
    loss = cross_entropy(logits, labels, options.label_smoothing).mean()
    return loss, jnp.sum(jnp.argmax(logits, -1) == labels)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  m = options.microbatches
  if m == 1:
    (loss, correct), grads = grad_fn(state.params, images, labels, step_key)
  else:
    def chunked(x):  # [B, ...] -> [m, B/m, ...]: chunk c holds examples c, c+m, c+2m, ...
      return jnp.swapaxes(x.reshape((x.shape[0] // m, m) + x.shape[1:]), 0, 1)

    def body(carry, chunk):
      chunk_images, chunk_labels, index = chunk
      (loss, correct), grads = grad_fn(state.params, chunk_images, chunk_labels,
                                       jax.random.fold_in(step_key, index))
      return jax.tree.map(jnp.add, carry, (loss, correct, grads)), None
    zeros = (jnp.zeros(()), jnp.zeros((), jnp.int32),
             jax.tree.map(jnp.zeros_like, state.params))
    (loss, correct, grads), _ = jax.lax.scan(
        body, zeros, (chunked(images), chunked(labels), jnp.arange(m)))
    loss, grads = loss / m, jax.tree.map(lambda g: g / m, grads)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  # A step with a NaN/inf loss or gradient is counted apart (the loop stops on it, or, with
  # skip_nonfinite_updates, optax.apply_if_finite drops its update) and left out of the means.
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
  metrics = {"loss": jnp.where(finite, loss * labels.shape[0], 0.0),
             "correct": jnp.where(finite, correct, 0),
             "count": jnp.where(finite, labels.shape[0], 0).astype(jnp.int32),
             "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  new_state = state.apply_gradients(grads=grads)
  if options.ema_decay:
    # The usual warm-up of the decay, so early averages are not dominated by the init.
    decay = jnp.minimum(options.ema_decay, (1.0 + state.step) / (10.0 + state.step))
    new_state = new_state.replace(ema_params=optax.incremental_update(
        new_state.params, state.ema_params, 1.0 - decay))
  return new_state, metrics


def train_steps(state: TrainState, batches, *, axis_name=None, options=StepOptions()):
  """Several train steps in one call: `batches` has a leading steps axis. Metrics are summed."""
  num_steps = jax.tree.leaves(batches)[0].shape[0]
  if num_steps == 1:  # No scan: XLA's CPU convolutions are much slower inside a loop.
    return train_step(state, jax.tree.map(lambda x: x[0], batches), axis_name=axis_name,
                      options=options)

  def body(state, batch):
    return train_step(state, batch, axis_name=axis_name, options=options)
  state, metrics = jax.lax.scan(body, state, batches)
  return state, jax.tree.map(lambda m: m.sum(0), metrics)


def eval_step(params, batch, *, apply_fn=None, axis_name=None, flip_average: bool = False):
  """Summed loss / correct / count over the unmasked examples of `batch`."""
  logits = models.inference_logits(apply_fn, params, input_pipeline.normalize(batch["image"]),
                                    flip_average=flip_average)
  mask = batch["mask"]
  metrics = {"loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
             "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
             "count": jnp.sum(mask)}
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return metrics


def summarize(sums: dict[str, Any]) -> tuple[float, float]:
  """(mean loss, accuracy) from summed metrics."""
  count = float(sums["count"]) or float("nan")
  return float(sums["loss"]) / count, float(sums["correct"]) / count


def host_sum(par: Parallelism, metrics_list, sums=None) -> dict[str, Any]:
  """Sums per-call metrics on the host, onto `sums` if given. No eager ops on global arrays:
  with several processes, extra device computations between the compiled steps can interleave
  their collectives."""
  sums = dict(sums or {})
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


class NonFiniteError(FloatingPointError):
  """A training step produced a NaN/inf loss or gradient."""


class Preempted(Exception):
  """SIGTERM arrived; the state was checkpointed at `step` and the run should exit."""
  exit_code = 75  # EX_TEMPFAIL: "try again", as schedulers that requeue understand it

  def __init__(self, step: int):
    super().__init__(f"preempted (SIGTERM): checkpoint saved at step {step}; run the same "
                     "command again to resume")
    self.step = step


class PreemptionWatch:
  """Whether to stop for a preemption notice, at the same step on every process.

  One process: SIGTERM sets a flag, read between compiled calls. Several processes: JAX's
  preemption sync service (started by jax.distributed.initialize) gets the notice and agrees on
  a call number at which all processes save (Orbax's `reached_preemption`).
  """

  def __init__(self, manager):
    self.manager, self.calls, self.requested = manager, 0, False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint after the current step")
    self.requested = True

  def reached(self) -> bool:
    """Call once after every compiled train call, on every process."""
    self.calls += 1
    if jax.process_count() > 1:
      return self.manager.reached_preemption(self.calls)
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class CompileTimer:
  """Seconds spent tracing, lowering and compiling in XLA (from jax.monitoring's events)."""
  EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")

  def __init__(self):
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    if event in self.EVENTS:
      self.seconds += duration

  def close(self):
    jax.monitoring.unregister_event_duration_listener(self._listen)


def _check_finite(par: Parallelism, calls, skip: bool) -> int:
  """Raises NonFiniteError if any of `calls` [(first step, num steps, metrics)] had a NaN/inf
  step, unless `skip`; returns how many such steps there were."""
  bad = 0
  for first, num, metrics in calls:
    count = int(par.to_host(metrics["nonfinite"]))
    if count and not skip:
      raise NonFiniteError(
          f"non-finite loss or gradient in steps {first + 1}-{first + num}: the run stopped "
          "without saving them, and the checkpoints already written are intact. Lower "
          "learning_rate, or set --config.skip_nonfinite_updates=True to drop such updates.")
    bad += count
  return bad


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains, evaluates after every epoch and at the end, checkpoints; returns the last eval.

  Raises ConfigError/ValueError/DataError on bad input before compiling anything,
  NonFiniteError on a NaN/inf step, and Preempted after saving when SIGTERM arrives.
  """
  # --- setup: everything that can fail on bad input fails here, before any compilation -------
  validate_config(config)
  par = Parallelism(config.parallelism)
  par.check_batch_size(config.batch_size, "batch_size")
  par.check_batch_size(config.eval_batch_size, "eval_batch_size")
  options = StepOptions.from_config(config, par.num_devices, par.devices[0].platform)
  if config.batch_size % (options.microbatches * par.num_devices):
    raise ConfigError(
        f"batch_size {config.batch_size} does not split into microbatches={config.microbatches}"
        f" chunks on each of {par.num_devices} devices: make batch_size a multiple of "
        f"{config.microbatches * par.num_devices}, lower microbatches, or use 0 (auto).")
  workdir_path = run_info.prepare_workdir(workdir)
  is_chief = jax.process_index() == 0

  splits = input_pipeline.load_splits(config)
  train_data = input_pipeline.create_train_data(config, par, splits)
  steps_per_epoch = train_data.steps_per_epoch
  if steps_per_epoch == 0:
    raise ConfigError(f"batch_size {config.batch_size} is larger than the training split "
                     f"({len(splits['train'][0])} examples).")
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  eval_sets = {name: input_pipeline.eval_batches(*splits[name], par, config.eval_batch_size)
               for name in ("val", "test") if name in splits}
  if config.stop_at_accuracy and config.stop_metric.removesuffix("_accuracy") not in eval_sets:
    raise ConfigError(f"stop_metric={config.stop_metric!r} needs the "
                     f"{config.stop_metric.removesuffix('_accuracy')} split: set "
                     "validation_size > 0 or stop on test_accuracy.")

  model = models.create_model(config)
  tx = create_optimizer(config, create_learning_rate_fn(config, steps_per_epoch, total_steps))
  state = par.replicate(create_train_state(config, model, tx))
  ckpt = checkpointing.Checkpointer(workdir_path / "checkpoints", config)
  try:
    state = ckpt.restore_latest(state)
  except BaseException:
    ckpt.close()  # no async machinery left behind by a refused restore
    raise
  start_step = int(par.to_host(state.step))
  if is_chief:
    run_info.record(workdir_path, config, par, steps_per_epoch=steps_per_epoch,
                    total_steps=total_steps, start_step=start_step)
    logging.info("%s; %d steps/epoch, %d steps in all; starting at step %d", par,
                 steps_per_epoch, total_steps, start_step)

  writer = metric_writers.MultiWriter(
      [metric_writers.create_default_writer(str(workdir_path), just_logging=not is_chief)] +
      ([JsonlWriter(str(workdir_path / run_info.METRICS_FILE))] if is_chief else []))
  train_fn = par.compile_train(functools.partial(train_steps, options=options))
  eval_model = models.create_model(config, conv_impl="xla")  # same parameters, faster inference
  eval_fn = par.compile_eval(
      functools.partial(eval_step, apply_fn=eval_model.apply,
                        flip_average=config.eval_flip_average))
  compile_timer, preemption = CompileTimer(), PreemptionWatch(ckpt.manager)
  try:
    last_eval = _loop(config, par, train_data, eval_sets, state, train_fn, eval_fn, ckpt,
                      writer, preemption, start_step, steps_per_epoch, total_steps,
                      workdir_path, is_chief, compile_timer)
  finally:
    compile_timer.close()
    preemption.close()
    ckpt.close()  # waits for async saves: what was saved is complete on disk
    writer.close()
  if config.write_report and is_chief:
    if jax.process_count() == 1:
      from fmnist_jax import report  # matplotlib and scikit-learn only when needed
      logging.info("report written to %s", report.write_report(str(workdir_path), splits))
    else:
      logging.info("multi-process run: write the report with "
                   "`python -m fmnist_jax.report --workdir %s`", workdir_path)
  return last_eval


def _loop(config, par, train_data, eval_sets, state, train_fn, eval_fn, ckpt, writer,
          preemption, start_step, steps_per_epoch, total_steps, workdir_path, is_chief,
          compile_timer):
  step = start_step
  last_eval = {}
  skipped = 0         # non-finite steps dropped (skip_nonfinite_updates)
  # This epoch's metrics: summed on the host up to the last log line, and the calls since,
  # left on the device until read (summing every call at every log line would cost O(calls^2)).
  epoch_sums, epoch_metrics = {}, []
  unchecked = []      # (first step, num steps, metrics) of calls not yet checked for NaN/inf
  stop_reason, preempt = "completed", False
  timer_step, timer_start, run_start = step, time.perf_counter(), time.perf_counter()

  def check(calls):
    nonlocal skipped
    skipped += _check_finite(par, calls, config.skip_nonfinite_updates)

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
      unchecked.append((step, num, metrics))
      if len(unchecked) > 2:  # the host runs at most two calls ahead of the devices
        check([unchecked.pop(0)])
      step += num
      steps_left_in_epoch -= num
      if _crossed(step, num, config.log_every_steps):
        epoch_sums, epoch_metrics = host_sum(par, epoch_metrics, epoch_sums), []
        loss, accuracy = summarize(epoch_sums)
        now = time.perf_counter()
        images_per_second = (step - timer_step) * config.batch_size / (now - timer_start)
        eta = (total_steps - step) * config.batch_size / max(images_per_second, 1e-9)
        logging.info("step %d/%d epoch %d | train loss %.4f acc %.4f | %s img/s | ETA %s",
                     step, total_steps, epoch + 1, loss, accuracy,
                     f"{images_per_second:,.0f}", _format_seconds(eta))
        timer_step, timer_start = step, now
      preempt = preemption.reached()
      end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
      if end_of_epoch:
        break  # (a preemption is handled after this epoch's evaluation and save)
      if preempt or _crossed(step, num, config.checkpoint_every_steps):
        check(unchecked)  # never save a state that went through a non-finite step
        unchecked = []
        ckpt.save(step, state)
      if preempt:
        raise Preempted(step)

    # --- evaluation: after every epoch and at the end -----------------------------------------
    check(unchecked)
    unchecked = []
    train_loss, train_accuracy = summarize(host_sum(par, epoch_metrics, epoch_sums))
    epoch_sums, epoch_metrics = {}, []
    scalars = {"epoch": step / steps_per_epoch, "train_loss": train_loss,
               "train_accuracy": train_accuracy}
    for name, batches in eval_sets.items():
      result = evaluate(eval_fn, state.eval_params, batches, par)
      scalars[f"{name}_loss"], scalars[f"{name}_accuracy"] = result["loss"], result["accuracy"]
      scalars[f"{name}_count"] = result["count"]
    scalars["elapsed_seconds"] = time.perf_counter() - run_start
    if skipped:
      scalars["skipped_updates"] = skipped
    writer.write_scalars(step, scalars)
    writer.flush()
    logging.info("epoch %.2f step %d | %s", scalars["epoch"], step,
                 " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in scalars.items() if k != "epoch"))
    ckpt.save(step, state, metrics=scalars)
    last_eval = scalars
    timer_step, timer_start = step, time.perf_counter()
    if preempt:
      raise Preempted(step)
    if config.stop_at_accuracy and scalars[config.stop_metric] >= config.stop_at_accuracy:
      logging.info("%s %.4f >= stop_at_accuracy %.4f: stopping at step %d", config.stop_metric,
                   scalars[config.stop_metric], config.stop_at_accuracy, step)
      stop_reason = "target_reached"
      break

  # Every process logs this: processes that disagree on the parameters show it here.
  checksum = sum(float(np.abs(x).sum()) for x in jax.tree.leaves(par.to_host(state.params)))
  logging.info("process %d: finished at step %d, parameter checksum %.10g",
               jax.process_index(), step, checksum)
  if is_chief and last_eval:
    _write_result(workdir_path, stop_reason=stop_reason, step=step, final=last_eval,
                  train_seconds=time.perf_counter() - run_start,
                  compile_seconds=compile_timer.seconds, resumed_from_step=start_step)
  return last_eval


def _write_result(workdir_path, **result) -> None:
  """WORKDIR/result.json: how the run ended, its last evaluation and its best by validation."""
  scored = [row for row in run_info.read_metrics(workdir_path) if "val_accuracy" in row]
  result["best_by_val"] = max(scored, key=lambda r: r["val_accuracy"]) if scored else None
  result["end_unix_time"] = time.time()
  (workdir_path / "result.json").write_text(json.dumps(result, indent=1) + "\n")
