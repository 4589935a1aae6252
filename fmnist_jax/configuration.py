"""Config checks, run before any data is read or anything is compiled."""

from __future__ import annotations

import math

from fmnist_jax import augment, dataset, initializers, input_pipeline, models, parallel, state
from fmnist_jax.config_file import get
from fmnist_jax.errors import ConfigError

STOP_METRICS = ("val_accuracy", "test_accuracy")
# Each choice list is owned by the module that implements the choices.
CHOICES = (("optimizer.name", state.OPTIMIZERS), ("optimizer.schedule", state.SCHEDULES),
           ("parallelism.mode", parallel.MODES), ("data.input_mode", input_pipeline.INPUT_MODES),
           ("model.dtype", tuple(models.DTYPES)), ("model.conv_impl", models.CONV_IMPLS),
           ("eval.stop_metric", STOP_METRICS), ("model.conv1_init", initializers.CONV1_INITS),
           ("augment.flip", augment.FLIPS))
POSITIVE = ("run.batch_size", "eval.batch_size", "parallelism.steps_per_call",
            "logging.every_steps", "checkpoints.keep", "model.dense_features",
            "model.num_classes")
COUNTS = ("checkpoints.every_steps", "checkpoints.keep_best", "data.validation_size",
          "run.seed", "parallelism.microbatches", "augment.translate", "augment.erase_size",
          "population.per_pass", "eval.tta_translate", "optimizer.lookahead_every")
FRACTIONS = ("optimizer.label_smoothing", "optimizer.ema_decay", "augment.erase_prob")
# A seed is traced as an int32 (its PRNG key; one value per member in a population).
SEED_LIMIT = 2 ** 31
# Fields with no effect under another field's value: (path, the other path, when, why). A single
# run says so in one warning; a population may not vary such a field (its members would be one
# run).
INERT = (("optimizer.weight_decay", "optimizer.name", lambda name: name == "adam",
          "optimizer.name='adam' applies none; adamw or sgd do"),
         ("augment.erase_size", "augment.erase_prob", lambda prob: prob == 0,
          "augment.erase_prob=0 erases nothing"),
         ("augment.erase_prob", "augment.erase_size", lambda size: size == 0,
          "augment.erase_size=0 erases nothing"))


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) \
      and math.isfinite(value)


def validate_config(config) -> None:
  """ConfigError listing every problem of the config at once, each with what to change."""
  problems = []

  def check(ok, message):
    if not ok:
      problems.append(message)
  _check_types(config, check)
  _check_values(config, check)
  if problems:
    raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))


def warnings(config) -> list[str]:
  """What a valid config does that its author probably did not mean, one line each (the run
  goes on): a warm-up no shorter than the run, whose learning rate never reaches its peak.
  Counted on Fashion-MNIST's training split, before any data is read."""
  lines = [f"{path}={get(config, path)!r} has no effect: {why}." for path, other, inert, why
           in INERT if get(config, path) and inert(get(config, other))]
  return lines + _warmup_warnings(config)


def _warmup_warnings(config) -> list[str]:
  opt, run = config.optimizer, config.run
  if not opt.schedule.startswith("warmup") or not opt.warmup_epochs:
    return []
  per_epoch = (dataset.NUM_TRAIN - config.data.validation_size) // run.batch_size
  total = run.num_train_steps if run.num_train_steps > 0 else run.num_epochs * per_epoch
  warmup = int(opt.warmup_epochs * per_epoch)
  if warmup < total:
    return []
  return [f"optimizer.warmup_epochs={opt.warmup_epochs} is {warmup} steps, and the run is "
          f"{total}: the learning rate never reaches its peak optimizer.learning_rate="
          f"{opt.learning_rate:g}; shorten the warm-up or lengthen the run."]


def _check_types(config, check) -> None:
  """Choices, counts and the numbers that must be finite."""
  for path, choices in CHOICES:
    value = get(config, path)
    check(value in choices, f"{path}={value!r} is not one of {', '.join(choices)}.")
  for path in POSITIVE:
    value = get(config, path)
    check(_is_int(value) and value > 0, f"{path}={value!r} must be a positive integer.")
  for path in COUNTS:
    value = get(config, path)
    check(_is_int(value) and value >= 0, f"{path}={value!r} must be an integer >= 0.")
  opt = config.optimizer
  check(_is_finite(opt.learning_rate) and opt.learning_rate > 0,
        f"optimizer.learning_rate={opt.learning_rate!r} must be > 0 and finite.")
  check(_is_finite(opt.warmup_epochs) and opt.warmup_epochs >= 0,
        f"optimizer.warmup_epochs={opt.warmup_epochs!r} must be a finite number >= 0.")
  every = config.checkpoints.every_seconds
  check(isinstance(every, (int, float)) and every >= 0,
        f"checkpoints.every_seconds={every!r} must be >= 0.")
  cache = config.parallelism.compilation_cache_dir
  check(isinstance(cache, str),
        f"parallelism.compilation_cache_dir={cache!r} must be a path or '' (off).")
  check(_is_finite(opt.lookahead_alpha) and 0 < opt.lookahead_alpha <= 1,
        f"optimizer.lookahead_alpha={opt.lookahead_alpha!r} must be in (0, 1].")
  for path in FRACTIONS:
    value = get(config, path)
    check(isinstance(value, (int, float)) and 0 <= value < 1,
          f"{path}={value!r} must be in [0, 1).")


def _check_values(config, check) -> None:
  """Ranges and the fields that must agree with each other or with the dataset."""
  run, model, opt, stop = config.run, config.model, config.optimizer, config.eval
  check(not _is_int(run.seed) or run.seed < SEED_LIMIT,
        f"run.seed={run.seed!r} must be below 2**31 (it is traced as an int32).")
  check(not _is_int(model.num_classes) or model.num_classes >= 10,
        f"model.num_classes={model.num_classes!r}: Fashion-MNIST has 10 classes; use 10.")
  check(_is_finite(opt.weight_decay) and opt.weight_decay >= 0,
        f"optimizer.weight_decay={opt.weight_decay!r} must be >= 0 and finite.")
  check(0 <= opt.momentum < 1, f"optimizer.momentum={opt.momentum!r} must be in [0, 1).")
  check(0 <= stop.stop_at_accuracy <= 1,
        f"eval.stop_at_accuracy={stop.stop_at_accuracy!r} must be in [0, 1] (0: off).")
  check(not (stop.stop_at_accuracy and stop.stop_metric == "val_accuracy"
             and config.data.validation_size == 0),
        "eval.stop_metric='val_accuracy' needs the val split: set data.validation_size > 0 or "
        "stop on test_accuracy.")
  profile = config.logging.profile_steps
  check(isinstance(profile, (tuple, list)) and len(profile) == 2
        and all(_is_int(s) and s >= 0 for s in profile)
        and (tuple(profile) == (0, 0) or profile[0] < profile[1]),
        f"logging.profile_steps={profile!r} must be (first, last) train steps with 0 <= first "
        "< last, e.g. (1000, 1500); (0, 0) turns the trace off.")
  _check_run(config, check)
  _check_recipe(config, check)
  rates = tuple(model.dropout_rates)
  check(len(rates) == 3 and all(0 <= r < 1 for r in rates),
        f"model.dropout_rates={rates!r} must be three rates, each in [0, 1).")
  features = tuple(model.conv_features)
  check(len(features) == 3 and all(_is_int(f) and f > 0 for f in features),
        f"model.conv_features={features!r} must be three positive integers.")


def _check_run(config, check) -> None:
  """The run's length and batches against each other and the dataset."""
  batch, micro = config.run.batch_size, config.parallelism.microbatches
  if _is_int(batch) and _is_int(micro) and micro:
    check(batch % micro == 0,
          f"parallelism.microbatches={micro} must divide run.batch_size={batch}.")
  steps, epochs = config.run.num_train_steps, config.run.num_epochs
  check(_is_int(steps) and (steps == -1 or steps > 0),
        f"run.num_train_steps={steps!r} must be -1 (the epochs decide) or a positive integer.")
  check(_is_int(epochs) and (epochs > 0 or steps > 0),
        f"run.num_epochs={epochs!r} must be a positive integer (or set run.num_train_steps > 0).")
  held_out, eval_batch = config.data.validation_size, config.eval.batch_size
  if _is_int(held_out) and _is_int(eval_batch):
    largest = max(dataset.NUM_TEST, held_out)
    check(eval_batch <= largest,
          f"eval.batch_size={eval_batch} is larger than the largest evaluated split ({largest} "
          f"images; the rest of a batch is padding): use at most {largest}.")
  if _is_int(held_out) and _is_int(batch):
    train_size = dataset.NUM_TRAIN - held_out
    check(train_size >= batch,
          f"data.validation_size={held_out} leaves {train_size} training images, fewer than "
          f"one batch of {batch}: lower data.validation_size (at most "
          f"{dataset.NUM_TRAIN - batch}).")


def _check_recipe(config, check) -> None:
  """The speedrun recipe's options that depend on other fields."""
  check(config.augment.translate <= 8,
        f"augment.translate={config.augment.translate!r}: shifts of more than 8 of 28 pixels "
        "push the garments out of the image; use 0-4.")
  tta = config.eval.tta_translate
  check(not _is_int(tta) or tta <= 4,
        f"eval.tta_translate={tta!r}: test-time shifts of more than 4 pixels move the garments "
        "out of the image; use 0-2.")
  check(config.augment.flip != "alternate" or config.data.input_mode == "device",
        "augment.flip='alternate' flips with the data order of data.input_mode='device': set "
        "--config.data.input_mode=device, or augment.flip='random'.")
  count = initializers.WHITEN_FILTERS
  features = tuple(config.model.conv_features)
  check(config.model.conv1_init != "whiten" or not features or features[0] >= count,
        f"model.conv1_init='whiten' sets {count} of conv1's filters: model.conv_features[0] "
        f"must be >= {count}, not {features[0] if features else None}.")
