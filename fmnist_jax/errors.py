"""The errors a user can act on. One base class, so `main` catches one type and prints one line.

Each message says what to change. This module imports nothing else of the package, so every
module can raise these without import cycles.
"""

import errno


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


class DiskFullError(FmnistError, OSError):
  """No space left on the device that holds the workdir; the message says what was saved."""


def is_disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from, is a full disk: ENOSPC from Python, or
  TensorStore's (Orbax's writer's) RESOURCE_EXHAUSTED "No space left on device"."""
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False
