"""Config checks, run before any data is read or anything is compiled."""

from __future__ import annotations

import math

from fmnist_jax import dataset, initializers, input_pipeline, models, parallel, state
from fmnist_jax.errors import ConfigError

STOP_METRICS = ("val_accuracy", "test_accuracy")
# Each choice list is owned by the module that implements the choices.
CHOICES = (("optimizer", state.OPTIMIZERS), ("schedule", state.SCHEDULES),
           ("parallelism", parallel.MODES), ("input_mode", input_pipeline.INPUT_MODES),
           ("dtype", tuple(models.DTYPES)), ("conv_impl", models.CONV_IMPLS),
           ("stop_metric", STOP_METRICS), ("conv1_init", initializers.CONV1_INITS))


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


def _check_types(config, check) -> None:
  """Choices, counts and the numbers that must be finite."""
  for field, choices in CHOICES:
    value = config[field]
    check(value in choices, f"{field}={value!r} is not one of {', '.join(choices)}.")
  for field in ("batch_size", "eval_batch_size", "steps_per_call", "log_every_steps",
                "keep_checkpoints", "dense_features", "num_classes"):
    value = config[field]
    check(_is_int(value) and value > 0, f"{field}={value!r} must be a positive integer.")
  for field in ("checkpoint_every_steps", "keep_best_checkpoints", "validation_size", "seed",
                "microbatches", "augment_translate", "augment_erase_size", "members_per_pass",
                "eval_translate", "lookahead_every"):
    value = config[field]
    check(_is_int(value) and value >= 0, f"{field}={value!r} must be an integer >= 0.")
  check(_is_finite(config.learning_rate) and config.learning_rate > 0,
        f"learning_rate={config.learning_rate!r} must be > 0 and finite.")
  check(_is_finite(config.warmup_epochs) and config.warmup_epochs >= 0,
        f"warmup_epochs={config.warmup_epochs!r} must be a finite number >= 0.")
  check(isinstance(config.checkpoint_every_seconds, (int, float))
        and config.checkpoint_every_seconds >= 0,
        f"checkpoint_every_seconds={config.checkpoint_every_seconds!r} must be >= 0.")
  check(isinstance(config.compilation_cache_dir, str),
        f"compilation_cache_dir={config.compilation_cache_dir!r} must be a path or '' (off).")
  check(_is_finite(config.lookahead_alpha) and 0 < config.lookahead_alpha <= 1,
        f"lookahead_alpha={config.lookahead_alpha!r} must be in (0, 1].")
  for field in ("label_smoothing", "ema_decay", "augment_erase_prob"):
    value = config[field]
    check(isinstance(value, (int, float)) and 0 <= value < 1,
          f"{field}={value!r} must be in [0, 1).")


def _check_values(config, check) -> None:
  """Ranges and the fields that must agree with each other or with the dataset."""
  check(not _is_int(config.seed) or config.seed < 2 ** 63,
        f"seed={config.seed!r} must be below 2**63 (a 64-bit signed integer).")
  check(not _is_int(config.num_classes) or config.num_classes >= 10,
        f"num_classes={config.num_classes!r}: Fashion-MNIST has 10 classes; use 10.")
  check(config.weight_decay >= 0, f"weight_decay={config.weight_decay!r} must be >= 0.")
  check(0 <= config.momentum < 1, f"momentum={config.momentum!r} must be in [0, 1).")
  check(0 <= config.stop_at_accuracy <= 1,
        f"stop_at_accuracy={config.stop_at_accuracy!r} must be in [0, 1] (0: off).")
  check(not (config.stop_at_accuracy and config.stop_metric == "val_accuracy"
             and config.validation_size == 0),
        "stop_metric='val_accuracy' needs the val split: set validation_size > 0 or stop on "
        "test_accuracy.")
  profile = config.profile_steps
  check(isinstance(profile, (tuple, list)) and len(profile) == 2
        and all(_is_int(s) and s >= 0 for s in profile)
        and (tuple(profile) == (0, 0) or profile[0] < profile[1]),
        f"profile_steps={profile!r} must be (first, last) train steps with 0 <= first < last, "
        "e.g. (1000, 1500); (0, 0) turns the trace off.")
  check(config.augment_translate <= 8,
        f"augment_translate={config.augment_translate!r}: shifts of more than 8 of 28 pixels "
        "push the garments out of the image; use 0-4.")
  if _is_int(config.batch_size) and _is_int(config.microbatches) and config.microbatches:
    check(config.batch_size % config.microbatches == 0,
          f"microbatches={config.microbatches} must divide batch_size={config.batch_size}.")
  steps = config.num_train_steps
  check(_is_int(steps) and (steps == -1 or steps > 0),
        f"num_train_steps={steps!r} must be -1 (the epochs decide) or a positive integer.")
  check(_is_int(config.num_epochs) and (config.num_epochs > 0 or steps > 0),
        f"num_epochs={config.num_epochs!r} must be a positive integer "
        "(or set num_train_steps > 0).")
  _check_recipe(config, check)
  rates = tuple(config.dropout_rates)
  check(len(rates) == 3 and all(0 <= r < 1 for r in rates),
        f"dropout_rates={rates!r} must be three rates, each in [0, 1).")
  features = tuple(config.conv_features)
  check(len(features) == 3 and all(_is_int(f) and f > 0 for f in features),
        f"conv_features={features!r} must be three positive integers.")
  if _is_int(config.validation_size) and _is_int(config.batch_size):
    train_size = dataset.NUM_TRAIN - config.validation_size
    check(train_size >= config.batch_size,
          f"validation_size={config.validation_size} leaves {train_size} training images, "
          f"fewer than one batch of {config.batch_size}: lower validation_size "
          f"(at most {dataset.NUM_TRAIN - config.batch_size}).")


def _check_recipe(config, check) -> None:
  """The speedrun recipe's options that depend on other fields."""
  check(not _is_int(config.eval_translate) or config.eval_translate <= 4,
        f"eval_translate={config.eval_translate!r}: test-time shifts of more than 4 pixels "
        "move the garments out of the image; use 0-2.")
  check(not config.augment_flip_alternate or (config.augment_flip
                                               and config.input_mode == "device"),
        "augment_flip_alternate=True chooses how augment_flip flips, with the data order of "
        "input_mode='device': set augment_flip=True and input_mode='device'.")
  count = initializers.WHITEN_FILTERS
  features = tuple(config.conv_features)
  check(config.conv1_init != "whiten" or not features or features[0] >= count,
        f"conv1_init='whiten' sets {count} of conv1's filters: conv_features[0] must be >= "
        f"{count}, not {features[0] if features else None}.")
