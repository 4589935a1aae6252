"""Reading a config file: `FILE` or `FILE:ARG`, a Python file defining get_config([ARG]) that
returns an ml_collections.ConfigDict. Imports neither jax nor TensorFlow, so the command line
can check a config file before either is loaded."""

from __future__ import annotations

import importlib.util

import ml_collections

from fmnist_jax.errors import ConfigError


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
  return config


def load_with_overrides(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """`FILE[:ARG]` with `--config.FIELD=VALUE` overrides applied by ml_collections' config_flags,
  exactly as `python -m fmnist_jax.main --config FILE ...` applies them. A ConfigError for a
  field the config has not (naming the closest) or a value of the wrong type."""
  import difflib
  from absl import flags
  from ml_collections import config_flags
  config = load(spec)
  for override in overrides:
    field = override.removeprefix("--config.").split("=", 1)[0].split(".")[0]
    if field not in config:
      close = difflib.get_close_matches(field, list(config.keys()), n=3, cutoff=0.6)
      raise ConfigError(f"--config.{field}: {spec.partition(':')[0]} has no field {field!r}"
                        + (f"; did you mean {', '.join(close)}?" if close else
                           "; its fields are listed in configs/default.py."))
  argv = ["fmnist_jax", f"--config={spec}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:
    raise ConfigError(str(e)) from None
  return values.config
