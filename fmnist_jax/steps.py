"""The pure, compiled-step code: loss, train steps, evaluation step, gradient accumulation.

Plain functions of arrays, compiled by `parallel.Parallelism` for jit or pmap. This module
imports jax, flax, optax and the model only: no file I/O, no checkpointing, no TensorFlow.

Metrics are sums, never means, so that they add up across steps, calls and devices:
{'loss': summed loss, 'correct', 'count', 'nonfinite' (steps with a NaN/inf loss or gradient),
'diverged' (steps after which a parameter is NaN/inf)}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax import augment, config_file, models, state as state_lib
from fmnist_jax.errors import ConfigError

AUGMENT_STREAM = 1  # fold_in(step_key, AUGMENT_STREAM): augmentation draws, apart from dropout's
# The fields a population may vary that a step reads, as TrainState.hparams keys -> config
# paths: the one list (StepOptions' values, each member's values and population.VARYING follow
# it; a varied optimizer field is population.IN_OPTIMIZER's).
STEP_FIELDS = {"label_smoothing": "optimizer.label_smoothing", "ema_decay": "optimizer.ema_decay",
               "dropout_rates": "model.dropout_rates", "translate": "augment.translate",
               "flip": "augment.flip", "erase_size": "augment.erase_size",
               "erase_prob": "augment.erase_prob"}

# What a member is doing (fmnist_jax.state): the step sets DIVERGED; population.stop_reached
# sets REACHED.
TRAINING, REACHED, DIVERGED, STATUS_NAMES = (state_lib.TRAINING, state_lib.REACHED,
                                             state_lib.DIVERGED, state_lib.STATUS_NAMES)


def step_value(path: str, value):
  """A STEP_FIELDS value as the step reads it: augment.flip's mode as whether it flips (which
  images an alternating flip turns comes with the batch)."""
  return value != "off" if path == "augment.flip" else value


def cross_entropy(logits, labels, label_smoothing=0.0):
  """Mean-free cross-entropy per example; `label_smoothing` may be a traced value."""
  if isinstance(label_smoothing, (int, float)) and not label_smoothing:
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
  varying: tuple = ()            # hparams keys read from the member's state (population.py)
  keep_stopped: bool = False     # a member that is not TRAINING keeps its state (others go on)
  stop_nonfinite: bool = True    # a NaN/inf loss or gradient diverges a member (else: skipped)
  # Distillation (fmnist_jax.distill): the loss also follows a teacher's log-probabilities,
  # batch["teacher"] (precomputed), or `teacher(teacher_params, images)` of each augmented batch.
  distill: bool = False
  distill_weight: float = 0.0
  temperature: float = 1.0
  teacher: Any = None

  @classmethod
  def from_config(cls, config, num_devices: int = 1, platform: str = "cpu") -> "StepOptions":
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(microbatches=resolve_microbatches(config, num_devices, platform),
               **{key: step_value(field, config_file.get(config, field))
                  for key, field in STEP_FIELDS.items() if key in names})

  @property
  def augments(self) -> bool:
    return bool(self.translate or self.flip or (self.erase_size and self.erase_prob))


def resolve_microbatches(config, num_devices: int, platform: str) -> int:
  """config.parallelism.microbatches; 0 ("auto") means chunks of 32 images on CPU, where
  cache-sized chunks train faster (docs/performance.md), and the whole batch on GPU/TPU. The
  chunking depends on the global batch only, so results stay the same on any device count."""
  if config.parallelism.microbatches:
    return config.parallelism.microbatches
  chunk = 32
  if platform == "cpu" and config.run.batch_size % chunk == 0 and chunk % num_devices == 0:
    return config.run.batch_size // chunk
  return 1


def check_microbatches(config, microbatches: int, num_devices: int) -> None:
  if config.run.batch_size % (microbatches * num_devices):
    raise ConfigError(
        f"run.batch_size {config.run.batch_size} does not split into "
        f"parallelism.microbatches={config.parallelism.microbatches} chunks on each of "
        f"{num_devices} devices: make run.batch_size a multiple of "
        f"{config.parallelism.microbatches * num_devices}, lower microbatches, or use 0 (auto).")


def distillation_loss(logits, cross_entropy_loss, teacher_log_probs, weight, temperature):
  """Per example: (1 - weight) * the labels' cross-entropy + weight * T^2 * KL(teacher_T ||
  student_T), each softened by T (Hinton et al., 2015: T^2 keeps the soft targets' gradients
  at the scale of the hard ones')."""
  soft = optax.losses.kl_divergence_with_log_targets(
      jax.nn.log_softmax(logits / temperature),
      jax.nn.log_softmax(teacher_log_probs / temperature))
  return (1.0 - weight) * cross_entropy_loss + weight * temperature ** 2 * soft


def accumulate_gradient(grad_fn, params, images, labels, key, microbatches: int):
  """grad_fn(params, images, labels, key) -> ((loss, correct), grads) over the whole batch, as
  the mean of `microbatches` interleaved chunks (example i in chunk i mod m, so every chunk is
  spread over all devices): the same gradient with less memory traffic. Chunk c draws its
  randomness from fold_in(key, c)."""
  m = microbatches
  if m == 1:
    return grad_fn(params, images, labels, key)

  def chunked(x):  # [B, ...] -> [m, B/m, ...]: chunk c holds examples c, c+m, c+2m, ...
    return jnp.swapaxes(x.reshape((x.shape[0] // m, m) + x.shape[1:]), 0, 1)

  def body(carry, chunk):  # (labels: an array, or a tree of per-example targets)
    chunk_images, chunk_labels, index = chunk
    (loss, correct), grads = grad_fn(params, chunk_images, chunk_labels,
                                     jax.random.fold_in(key, index))
    return jax.tree.map(jnp.add, carry, (loss, correct, grads)), None
  zeros = (jnp.zeros(()), jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))
  (loss, correct, grads), _ = jax.lax.scan(
      body, zeros, (chunked(images), jax.tree.map(chunked, labels), jnp.arange(m)))
  return (loss / m, correct), jax.tree.map(lambda g: g / m, grads)


def train_step(state, batch, teacher=None, *, axis_name=None, options=StepOptions()):
  """One optimizer step on `batch` {'image': uint8 [B,28,28,1], 'label': int [B]}.

  Under pmap (axis_name given) the batch is this device's shard: gradients are averaged and
  metrics summed over the axis, and each device folds its index into the dropout key.
  A population member's varying fields come from `state.hparams` (options.varying); a step
  that leaves its parameters NaN/inf (or, with options.stop_nonfinite, has a NaN/inf loss or
  gradient) sets its status DIVERGED, and with options.keep_stopped a member that is not
  TRAINING keeps its state (the step that diverged it too: its state from before).
  `teacher`: the teacher's parameters when options.teacher computes its predictions here.
  Returns the new state and summed metrics {'loss', 'correct', 'count', 'nonfinite',
  'diverged'}.
  """
  hyper = member_values(state.hparams, options)
  step_key = jax.random.fold_in(state.dropout_key, state.step)
  if axis_name is not None:
    step_key = jax.random.fold_in(step_key, jax.lax.axis_index(axis_name))
  images, labels = batch["image"], batch["label"]
  if options.augments:
    images = augment.augment(jax.random.fold_in(step_key, AUGMENT_STREAM), images,
                             translate=hyper["translate"], flip=hyper["flip"],
                             erase_size=hyper["erase_size"], erase_prob=hyper["erase_prob"],
                             pad=options.translate, flip_mask=batch.get("flip"))
  images = models.normalize(images)
  rates = {"dropout_rates": hyper["dropout_rates"]} if "dropout_rates" in hyper else {}

  def loss_fn(params, images, targets, key):
    logits = state.apply_fn({"params": params}, images, train=True, rngs={"dropout": key},
                            **rates)
    return (_loss(logits, targets, hyper["label_smoothing"], options).mean(),
            jnp.sum(jnp.argmax(logits, -1) == targets["label"]))
  (loss, correct), grads = accumulate_gradient(jax.value_and_grad(loss_fn, has_aux=True),
                                               state.params, images,
                                               _targets(batch, images, teacher, options),
                                               step_key, options.microbatches)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  # A step with a NaN/inf loss or gradient is counted apart (the loop stops on it, or, with
  # skip_nonfinite_updates, optax.apply_if_finite drops its update) and left out of the means.
  # Elementwise, as apply_if_finite tests: a finite gradient whose norm overflows is applied.
  finite = jnp.isfinite(loss) & all_finite(grads)
  metrics = {"loss": jnp.where(finite, loss * labels.shape[0], 0.0),
             "correct": jnp.where(finite, correct, 0),
             "count": jnp.where(finite, labels.shape[0], 0).astype(jnp.int32),
             "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  new_state = state.apply_gradients(grads=grads)
  # Whether the update made a parameter NaN/inf (apply_if_finite gives up after 5 in a row).
  metrics["diverged"] = jnp.logical_not(all_finite(new_state.params)).astype(jnp.int32)
  if options.ema_decay:
    # The usual warm-up of the decay, so early averages are not dominated by the init.
    decay = jnp.minimum(hyper["ema_decay"], (1.0 + state.step) / (10.0 + state.step))
    new_state = new_state.replace(ema_params=optax.incremental_update(
        new_state.params, state.ema_params, 1.0 - decay))
  return _update_status(state, new_state, metrics, finite, options)


def _targets(batch, images, teacher, options: StepOptions) -> dict:
  """What the loss compares each example's logits with: its label, and with distillation the
  teacher's log-probabilities (the batch's precomputed ones, or its forward passes here on the
  augmented, normalized `images`)."""
  targets = {"label": batch["label"]}
  if options.distill:
    targets["teacher"] = batch["teacher"] if options.teacher is None else jax.lax.stop_gradient(
        options.teacher(teacher, images))
  return targets


def _loss(logits, targets: dict, label_smoothing, options: StepOptions):
  """The per-example training loss: cross-entropy, or with distillation its mix with the
  teacher's softened predictions."""
  loss = cross_entropy(logits, targets["label"], label_smoothing)
  if not options.distill:
    return loss
  return distillation_loss(logits, loss, targets["teacher"], options.distill_weight,
                           options.temperature)


def _update_status(state, new_state, metrics, finite, options: StepOptions):
  """A training member whose step left its parameters NaN/inf (or, with
  options.stop_nonfinite, was NaN/inf) is DIVERGED from this step on; with
  options.keep_stopped, every member that is not training keeps its state."""
  training = state.hparams["status"] == TRAINING
  bad = (metrics["diverged"] > 0) | (jnp.logical_not(finite) & options.stop_nonfinite)
  diverges = training & bad
  new_state = new_state.replace(hparams=dict(
      new_state.hparams, status=jnp.where(diverges, DIVERGED, state.hparams["status"]),
      status_step=jnp.where(diverges, state.step + 1, state.hparams["status_step"])))
  if not options.keep_stopped:
    return new_state, metrics
  return _keep_if_stopped(training & ~bad, training, state, new_state, metrics)


def member_values(hparams, options: StepOptions) -> dict:
  """The values a step uses for the fields a population may vary: a member's (traced) where
  the population varies them, the options' constants elsewhere and where every member is
  0/off (that feature's code then stays out of the program); "dropout_rates" only when
  varied."""
  values = {key: getattr(options, key) for key in STEP_FIELDS if hasattr(options, key)}
  traced = {key: hparams[key] for key in options.varying if values.get(key, True)}
  return {**values, **traced}


def _keep_if_stopped(keep, training, state, new_state, metrics):
  """A stopped member (stop_at_accuracy reached, or diverged) keeps its state where `keep` is
  off, and adds no metrics once stopped (`training` off: the step it diverged still counts its
  NaN/inf); the step counter, shared by the population, advances, and so does its status."""
  def chosen(new, old):
    return jnp.where(keep, new, old)
  new_state = new_state.replace(
      params=jax.tree.map(chosen, new_state.params, state.params),
      opt_state=jax.tree.map(chosen, new_state.opt_state, state.opt_state),
      ema_params=jax.tree.map(chosen, new_state.ema_params, state.ema_params))
  return new_state, jax.tree.map(lambda m: jnp.where(training, m, jnp.zeros_like(m)), metrics)


def train_steps(state, batches, teacher=None, *, axis_name=None, options=StepOptions(),
                steps_taken=None):
  """Several train steps in one call: `batches` has a leading steps axis. Metrics are summed.

  `steps_taken` (an int array, or None for all): only the first `steps_taken` steps count; the
  others run but leave the state unchanged and add nothing. One compiled program then serves
  every call of a run, also an epoch's shorter last one.
  """
  num_steps = jax.tree.leaves(batches)[0].shape[0]
  if num_steps == 1:  # No scan: XLA's CPU convolutions are much slower inside a loop.
    return train_step(state, jax.tree.map(lambda x: x[0], batches), teacher,
                      axis_name=axis_name, options=options)

  def body(state, batch_and_index):
    batch, index = batch_and_index
    new_state, metrics = train_step(state, batch, teacher, axis_name=axis_name, options=options)
    if steps_taken is not None:  # a select, not a branch: no host round trip on GPU
      keep = index < steps_taken
      new_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_state, state)
      metrics = jax.tree.map(lambda m: jnp.where(keep, m, jnp.zeros_like(m)), metrics)
    return new_state, metrics
  state, metrics = jax.lax.scan(body, state, (batches, jnp.arange(num_steps)))
  return state, jax.tree.map(lambda m: m.sum(0), metrics)


def all_finite(tree) -> jax.Array:
  """Whether every element of every array in `tree` is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def add_metrics(sums, metrics):
  """Running sums of metrics, on device."""
  return jax.tree.map(lambda s, m: s + m.astype(s.dtype), sums, metrics)


def zero_metrics(members: int = 1) -> dict[str, Any]:
  """The running sums' starting point, on the host: float32 loss, int32 counts; one of each
  per member."""
  shape = (members,)
  return {"loss": np.zeros(shape, np.float32), "correct": np.zeros(shape, np.int32),
          "count": np.zeros(shape, np.int32), "nonfinite": np.zeros(shape, np.int32),
          "diverged": np.zeros(shape, np.int32)}


def train_call(state, batches, sums, steps_taken, teacher=None, *, axis_name=None,
               options=StepOptions()):
  """The training loop's compiled call: `steps_taken` steps of `batches`, their metrics added to
  the running `sums` on device (nothing leaves the device between log points)."""
  state, metrics = train_steps(state, batches, teacher, axis_name=axis_name, options=options,
                               steps_taken=steps_taken)
  return state, add_metrics(sums, metrics)


def eval_step(params, batch, *, apply_fn=None, axis_name=None, flip_average: bool = False,
              translate: int = 0):
  """Summed loss / correct / count over the unmasked examples of `batch` (with the test-time
  augmentation of models.inference_logits)."""
  logits = models.inference_logits(apply_fn, params, models.normalize(batch["image"]),
                                   flip_average=flip_average, translate=translate)
  mask = batch["mask"]
  metrics = {"loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
             "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
             "count": jnp.sum(mask)}
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return metrics


def healthy(status) -> np.ndarray:
  """Per member (host values of hparams["status"]), whether it did not diverge: the members
  that the means, the ensembles and the stop rule count."""
  return np.asarray(status) != DIVERGED


def summarize(sums: dict[str, Any]) -> tuple[float, float]:
  """(mean loss, accuracy) from summed metrics (host values; a population's pooled over its
  members, i.e. the members' mean)."""
  count = float(np.sum(sums["count"])) or float("nan")
  return float(np.sum(sums["loss"])) / count, float(np.sum(sums["correct"])) / count
