"""The training state and how it is built: TrainState, the optimizer, the schedule.

`initial_state(config)` is the one way every caller (the loop, evaluation, benchmarks, tests)
builds a state: the model, its optimizer and the initial parameters, all from the config.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from fmnist_jax import models

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "warmup_linear")


def create_learning_rate_fn(config, steps_per_epoch: int, total_steps: int, peak=None):
  """The config's schedule, peaking at config.optimizer.learning_rate (or `peak`)."""
  peak = config.optimizer.learning_rate if peak is None else peak
  if config.optimizer.schedule == "constant":
    return optax.constant_schedule(peak)
  if config.optimizer.schedule == "cosine":
    return optax.cosine_decay_schedule(peak, total_steps)
  warmup = int(config.optimizer.warmup_epochs * steps_per_epoch)
  if config.optimizer.schedule == "warmup_linear":  # one cycle of straight lines: up, down to 0
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1))],
                                [warmup])
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1))


def create_optimizer(config, learning_rate_fn, weight_decay=None) -> optax.GradientTransformation:
  """The config's optimizer; `weight_decay` (possibly traced) replaces
  config.optimizer.weight_decay. sgd is Nesterov's momentum, its weight decay added to the
  gradient (L2, as PyTorch's)."""
  weight_decay = config.optimizer.weight_decay if weight_decay is None else weight_decay
  if config.optimizer.name == "adam":
    tx = optax.adam(learning_rate_fn)
  elif config.optimizer.name == "adamw":
    tx = optax.adamw(learning_rate_fn, weight_decay=weight_decay)
  else:
    tx = optax.sgd(learning_rate_fn, momentum=config.optimizer.momentum, nesterov=True)
    if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
      tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  if config.optimizer.lookahead_every:
    tx = lookahead(tx, config.optimizer.lookahead_every, config.optimizer.lookahead_alpha)
  if config.optimizer.skip_nonfinite_updates:
    # Drops updates whose gradients hold a NaN/inf; gives up after 5 in a row.
    tx = optax.apply_if_finite(tx, max_consecutive_errors=5)
  return tx


def member_optimizer(config, steps_per_epoch: int, total_steps: int):
  """The optimizer of a population's members: each member's learning rate and weight decay are
  values in its optimizer state (optax.inject_hyperparams), so one compiled program serves
  any values. The schedule has the config's shape, scaled to the member's peak."""
  unit = create_learning_rate_fn(config, steps_per_epoch, total_steps, peak=1.0)

  def optimizer(learning_rate, weight_decay):
    return create_optimizer(config, lambda count: learning_rate * unit(count), weight_decay)
  return optax.inject_hyperparams(optimizer)(learning_rate=config.optimizer.learning_rate,
                                             weight_decay=config.optimizer.weight_decay)


class LookaheadState(NamedTuple):
  inner: Any
  slow: Any           # the slow weights
  count: jax.Array


def lookahead(inner: optax.GradientTransformation, every: int,
              alpha: float) -> optax.GradientTransformation:
  """Lookahead (Zhang et al., 2019): `inner` moves the (fast) parameters; every `every` steps
  the slow weights move `alpha` of the way to them and the parameters restart from there.
  optax.lookahead does the same on a LookaheadParams pair, which would change the parameters'
  structure everywhere they are used (apply, EMA, checkpoints, the report); here the slow
  weights live in the optimizer state and the parameters stay the model's."""
  def init(params):
    return LookaheadState(inner.init(params), jax.tree.map(jnp.copy, params),
                          jnp.zeros((), jnp.int32))

  def update(updates, state, params):
    updates, inner_state = inner.update(updates, state.inner, params)
    fast = optax.apply_updates(params, updates)
    count = state.count + 1
    sync = count % every == 0
    slow = jax.tree.map(lambda s, f: jnp.where(sync, s + alpha * (f - s), s), state.slow, fast)
    new = jax.tree.map(lambda s, f: jnp.where(sync, s, f), slow, fast)
    return (jax.tree.map(jnp.subtract, new, params),
            LookaheadState(inner_state, slow, count))
  return optax.GradientTransformation(init, update)


# What a member is doing: its one status, TrainState.hparams["status"], with the step it took
# it in hparams["status_step"] (checkpointed; the stop rule, the rows, the messages and
# result.json read them).
TRAINING, REACHED, DIVERGED = 0, 1, 2
STATUS_NAMES = ("training", "reached", "diverged")


class TrainState(train_state.TrainState):
  """Flax TrainState plus the base dropout key (step keys are fold_in(dropout_key, step)),
  when config.optimizer.ema_decay > 0, an exponential moving average of the parameters, and in a
  population (fmnist_jax.population) each member's values of the fields it varies."""
  dropout_key: jax.Array
  ema_params: Any = None
  hparams: Any = None  # its status, and a population member's values (init_state)

  @property
  def eval_params(self):
    """The parameters to evaluate and report: the EMA when there is one."""
    return self.params if self.ema_params is None else self.ema_params


def create_train_state(config, model, tx, image_shape=(28, 28, 1), adjust=None) -> TrainState:
  """The initial state. Parameters and dropout key both derive from config.run.seed. One compiled
  program (op by op, the optimizer's init alone would compile dozens)."""
  ema = bool(config.optimizer.ema_decay)
  return jax.jit(lambda: init_state(model, tx, config.run.seed, ema, image_shape,
                                    adjust=adjust))()


def init_state(model, tx, seed, ema: bool, image_shape=(28, 28, 1), hparams=None,
               adjust=None) -> TrainState:
  """A state from `seed` (a traced value under vmap: a population's members); `adjust`
  (fmnist_jax.initializers.recipe) changes the drawn parameters before anything copies them.
  Its hparams: `hparams` and a status of TRAINING since step 0."""
  params_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(params_key, jnp.zeros((1,) + image_shape), train=False)["params"]
  params = adjust(params) if adjust else params
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx, dropout_key=dropout_key,
                           ema_params=params if ema else None, hparams={
                               "status": jnp.int32(TRAINING), "status_step": jnp.int32(0),
                               **(hparams or {})})


def initial_state(config, steps_per_epoch: int = 1, total_steps: int = 1, *,
                  conv_impl: str | None = None, adjust=None) -> TrainState:
  """The config's model, optimizer (with its schedule over `total_steps`) and initial state, on
  the host. `conv_impl` overrides config.model.conv_impl (the parameters are the same either way);
  `adjust`: the recipe's initialisation (fmnist_jax.initializers.recipe), for training."""
  model = models.create_model(config, conv_impl=conv_impl)
  tx = create_optimizer(config, create_learning_rate_fn(config, steps_per_epoch, total_steps))
  return create_train_state(config, model, tx, adjust=adjust)
