"""Reading a config file: `FILE` or `FILE:ARG`, a Python file defining get_config([ARG]) that
returns an ml_collections.ConfigDict in sections, and its overrides by path
(`--config.SECTION.FIELD=VALUE`), checked; with the paths' helpers and the one mapping of the
flat names configs had before the sections. Imports neither jax nor TensorFlow, so the command
line can check a config file before either is loaded."""

from __future__ import annotations

import importlib.util

import ml_collections

from fmnist_jax.errors import ConfigError

# The flat field names of configs written before the config had sections -> their paths: the one
# mapping, read where old workdirs are (workdir.layered) and where old overrides are refused.
# augment_flip_alternate has no path: it and augment_flip are augment.flip's mode.
RENAMED = {
    "seed": "run.seed", "num_epochs": "run.num_epochs", "num_train_steps": "run.num_train_steps",
    "batch_size": "run.batch_size", "data_dir": "data.tfds_dir", "idx_dir": "data.idx_dir",
    "data_cache_dir": "data.cache_dir", "validation_size": "data.validation_size",
    "input_mode": "data.input_mode", "conv_features": "model.conv_features",
    "dense_features": "model.dense_features", "num_classes": "model.num_classes",
    "dropout_rates": "model.dropout_rates", "dtype": "model.dtype",
    "conv_impl": "model.conv_impl", "conv1_init": "model.conv1_init",
    "dirac_init": "model.dirac_init", "optimizer": "optimizer.name",
    "learning_rate": "optimizer.learning_rate", "schedule": "optimizer.schedule",
    "warmup_epochs": "optimizer.warmup_epochs", "weight_decay": "optimizer.weight_decay",
    "momentum": "optimizer.momentum", "lookahead_every": "optimizer.lookahead_every",
    "lookahead_alpha": "optimizer.lookahead_alpha", "label_smoothing": "optimizer.label_smoothing",
    "ema_decay": "optimizer.ema_decay",
    "skip_nonfinite_updates": "optimizer.skip_nonfinite_updates",
    "augment_translate": "augment.translate", "augment_flip": "augment.flip",
    "augment_erase_size": "augment.erase_size", "augment_erase_prob": "augment.erase_prob",
    "eval_batch_size": "eval.batch_size", "eval_flip_average": "eval.tta_flip",
    "eval_translate": "eval.tta_translate", "stop_at_accuracy": "eval.stop_at_accuracy",
    "stop_metric": "eval.stop_metric", "population": "population.members",
    "members_per_pass": "population.per_pass", "parallelism": "parallelism.mode",
    "steps_per_call": "parallelism.steps_per_call", "microbatches": "parallelism.microbatches",
    "compilation_cache_dir": "parallelism.compilation_cache_dir",
    "checkpoint_every_seconds": "checkpoints.every_seconds",
    "checkpoint_every_steps": "checkpoints.every_steps", "keep_checkpoints": "checkpoints.keep",
    "keep_best_checkpoints": "checkpoints.keep_best",
    "resume_with_changed_steps": "checkpoints.resume_with_changed_steps",
    "async_checkpointing": "checkpoints.asynchronous", "log_every_steps": "logging.every_steps",
    "write_report": "logging.write_report", "profile_steps": "logging.profile_steps",
}


# Folders each host of a multi-process run may keep at its own place (local disks); every other
# field must be the same on every process.
HOST_PATHS = ("data.tfds_dir", "data.idx_dir", "data.cache_dir",
              "parallelism.compilation_cache_dir")


def renamed(name: str, prefix: str = "--config.") -> str | None:
  """"X is now Y" for a flat name from before the sections (with how augment_flip's values
  read now), or None."""
  if name == "augment_flip_alternate":
    return (f"{prefix}{name} is now {prefix}augment.flip='alternate' (augment.flip is one mode: "
            "'off', 'random' or 'alternate')")
  if name not in RENAMED:
    return None
  note = (" (one mode now: True is 'random', False 'off', and with augment_flip_alternate "
          "'alternate')" if name == "augment_flip" else " (the config is in sections: "
          "configs/default.py)")
  return f"{prefix}{name} is now {prefix}{RENAMED[name]}{note}"


def get(config, path: str):
  """The value at "section.field"."""
  section, field = path.split(".")
  return config[section][field]


def paths(config) -> list[str]:
  """Every "section.field" of a config, in its order."""
  return [f"{section}.{field}" for section in config for field in config[section]]


def field_name(path: str) -> str:
  """A path's field ("learning_rate"): how rows, result.json and the report name it."""
  return path.rpartition(".")[2]


def nearest(path: str, known) -> list[str]:
  """[the path of `known` meant by a misspelt `path`], or []: the one with the same field in
  another section ("run.learning_rate" -> "optimizer.learning_rate"), else the closest."""
  import difflib
  field = path.split(".")[1] if "." in path else ""
  return [p for p in known if field and field_name(p) == field][:1] or \
      difflib.get_close_matches(path, known, n=1, cutoff=0.6)


def from_flat(recorded: dict) -> dict:
  """A config recorded with flat names ({"learning_rate": ..., "augment_flip": ...}) as
  sections ({"optimizer": {"learning_rate": ...}, "augment": {"flip": "random"}}); a name
  without a path stays at the top, for the caller to name as gone."""
  alternate = bool(recorded.get("augment_flip_alternate"))
  converted = {  # the old values that are written otherwise now
      "augment_flip": lambda flip: "off" if not flip else "alternate" if alternate else "random",
      "population": lambda pairs: [(RENAMED.get(field, field), [value_of(field, v) for v in vs])
                                   for field, vs in pairs]}

  def value_of(old, value):
    return converted[old](value) if old in converted else value
  nested = {}
  for old, value in recorded.items():
    if old in RENAMED:
      section, field = RENAMED[old].split(".")
      nested.setdefault(section, {})[field] = value_of(old, value)
    elif old != "augment_flip_alternate":
      nested[old] = value
  return nested


def load_module(path: str):
  """The config file as a module (its get_config, and VARIANTS where it has them)."""
  module_spec = importlib.util.spec_from_file_location("config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load(spec: str) -> ml_collections.ConfigDict:
  """get_config() of `FILE` (or get_config(ARG) of `FILE:ARG`); a ConfigError saying what is
  wrong with the file otherwise."""
  path, _, arg = spec.partition(":")
  try:
    with open(path) as f:
      source = f.read()
  except OSError as e:
    raise ConfigError(f"config file {path!r} cannot be read: {e.strerror or e}") from None
  try:
    compile(source, path, "exec")
  except SyntaxError as e:
    raise ConfigError(f"config file {path!r} has a syntax error at line {e.lineno}: {e.msg}. A "
                      "config file is Python defining get_config() -> "
                      "ml_collections.ConfigDict.") from None
  module = load_module(path)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {path!r} defines no get_config(). A config file is Python "
                      "defining get_config() -> ml_collections.ConfigDict (see "
                      "configs/default.py).")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (a user's file: say what it said)
    raise ConfigError(f"get_config({arg}) in {path!r} failed: {type(e).__name__}: "
                      f"{e}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"get_config() in {path!r} returned a {type(config).__name__}, not an "
                      "ml_collections.ConfigDict: build it as configs/default.py does, or start "
                      "from `config = default.get_config()`.")
  check_fields(config, path)
  return config


def check_fields(config, where: str) -> None:
  """One ConfigError line for the first field of a config file that is not configs/default.py's
  by path, as an override would get: a flat name from before the sections (its path now), a
  misspelt field or section (the nearest path), a section given a value, or a section or field
  the file deleted."""
  from configs import default
  reference = default.get_config()
  start = "start from `config = default.get_config()` and change its fields (configs/tiny.py)"
  for key in config:
    if key in reference and isinstance(config[key], ml_collections.ConfigDict):
      continue
    if renamed(key):
      raise ConfigError(f"{where}: {renamed(key, 'config.')}.")
    if key in reference:
      raise ConfigError(f"{where} gives the section config.{key} a value: set its fields, "
                        f"e.g. config.{key}.{next(iter(reference[key]))}.")
    close = nearest(f"{key}.", list(reference)) or nearest(key, list(reference))
    raise ConfigError(f"{where} sets config.{key}, which is no section of the config"
                      + (f"; did you mean config.{close[0]}?" if close else
                         f" (its sections: {', '.join(reference)})."))
  for section in reference:
    if section not in config:
      raise ConfigError(f"{where} has no section config.{section}: {start}.")
    for field in config[section]:
      if field not in reference[section]:
        close = nearest(f"{section}.{field}", paths(reference))
        raise ConfigError(f"{where} sets config.{section}.{field}, which is no field of the "
                          "config" + (f"; did you mean config.{close[0]}?" if close else
                                      " (its fields are in configs/default.py)."))
    missing = [field for field in reference[section] if field not in config[section]]
    if missing:
      raise ConfigError(f"{where} has no config.{section}.{missing[0]}: {start}.")


def load_with_overrides(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """`FILE[:ARG]` with `--config.SECTION.FIELD=VALUE` overrides applied by ml_collections'
  config_flags, exactly as `python -m fmnist_jax.main --config FILE ...` applies them. A
  ConfigError for a path the config has not (naming the closest), a section given a value, an
  old flat name (naming its path) or a value of the wrong type."""
  from absl import flags
  from ml_collections import config_flags
  config = load(spec)
  for override in overrides:
    path, _, text = override.removeprefix("--config.").partition("=")
    check_path(config, path, spec.partition(":")[0])
    _check_not_a_dict(path, text)
  argv = ["fmnist_jax", f"--config={spec}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:
    raise ConfigError(str(e)) from None
  return values.config


def _check_not_a_dict(path: str, text: str) -> None:
  """config_flags reads a dict given for a tuple field as its keys: say so, with the text."""
  import ast
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return
  if isinstance(value, dict):
    raise ConfigError(f"--config.{path}={text}: a dict, where the field takes a tuple "
                      "(population.members: (path, values) pairs, e.g. "
                      "(('optimizer.learning_rate', (1e-3, 3e-3)),)).")


def check_path(config, path: str, where: str) -> None:
  """One ConfigError line when `path` is not a "section.field" of `config`."""
  section, _, field = path.partition(".")
  if section in config and isinstance(config[section], ml_collections.ConfigDict) and not field:
    example = RENAMED.get(path, f"{path}.{next(iter(config[section]))}")
    raise ConfigError(f"--config.{path} is a section: set one of its fields, e.g. "
                      f"--config.{example}=... (its fields: {', '.join(config[section])}).")
  if renamed(path) and path not in config:
    raise ConfigError(f"{renamed(path)}.")
  if section not in config or field not in config[section] or "." in field:
    close = nearest(path, paths(config))
    raise ConfigError(f"--config.{path}: {where} has no field {path!r}"
                      + (f"; did you mean {close[0]}?" if close else
                         "; its sections and fields are in configs/default.py."))
