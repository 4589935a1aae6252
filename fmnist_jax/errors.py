"""The errors a user can act on. One base class, so `main` catches one type and prints one line.

Each message says what to change. This module imports nothing else of the package, so every
module can raise these without import cycles.
"""


class FmnistError(Exception):
  """Base class: bad input or an unusable file; the message says what to do."""


class ConfigError(FmnistError, ValueError):
  """A config value a user must change; the message lists every problem found."""


class DataError(FmnistError, RuntimeError):
  """Missing, corrupt or unusable data; the message says what to do."""


class CheckpointError(FmnistError, RuntimeError):
  """A checkpoint that cannot be used with this config, or no usable checkpoint at all."""


class NonFiniteError(FmnistError, FloatingPointError):
  """A training step produced a NaN/inf loss or gradient."""


class ReportError(FmnistError, RuntimeError):
  """A workdir that cannot be reported on or read; the message says why."""
