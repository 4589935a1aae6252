"""The console: the project's lines, each with its time; of the libraries', only what a user
must see. One configuration for every entry point (main, report, compare, dataset)."""

from __future__ import annotations

import logging as std_logging
import os
import sys
import warnings

from absl import logging


class _QuietLibraries(std_logging.Filter):
  """The console shows the project's lines; of the libraries' (Orbax logs every save step,
  tfds every split it opens, JAX the backends it did not find), their warnings and errors only,
  less those that describe normal use (a periodic save without metrics, a report opening
  checkpoints read-only). --verbose shows everything."""
  BENIGN = ("Requested `tracked_metric`", "Given directory is read only",
            "setting save_interval_steps=0", "has no dataset_info.json",
            # Orbax's notes on what a kill left (a save cut short: never taken for a checkpoint)
            "Attempted to create temporary directory", "Metadata file does not exist")

  # A full disk: the run stops with one line of its own (errors.DiskFullError), not Orbax's
  # tracebacks from each of its writer threads.
  DISK_FULL = "No space left on device"

  # The package's folder and the benchmarks' beside it, as folders (a checkout named fmnist_jax
  # holds a .venv whose libraries' paths also contain "/fmnist_jax/").
  _PACKAGE = os.path.dirname(os.path.abspath(__file__))
  OURS = (_PACKAGE + os.sep, os.path.join(os.path.dirname(_PACKAGE), "benchmarks") + os.sep)

  def __init__(self, verbose: bool = False):
    super().__init__()
    self.verbose = verbose

  def filter(self, record):
    if self.verbose or _is_ours(record):
      return True
    message = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    return record.levelno >= std_logging.WARNING and self.DISK_FULL not in message and not any(
        text in message for text in self.BENIGN)


def _is_ours(record) -> bool:
  return os.path.abspath(record.pathname).startswith(_QuietLibraries.OURS)


class _ConsoleFormat(std_logging.Formatter):
  """The project's lines as `HH:MM:SS message` (warnings and errors say so); the libraries'
  keep absl's prefix, which names their file."""

  def __init__(self, absl_format: std_logging.Formatter):
    super().__init__()
    self.absl_format = absl_format

  def format(self, record):
    if not _is_ours(record):
      return self.absl_format.format(record)
    level = "" if record.levelno < std_logging.WARNING else f"{record.levelname.lower()}: "
    return f"{self.formatTime(record, '%H:%M:%S')} {level}{record.getMessage()}"


def configure(verbose: bool = False) -> None:
  """The console of every entry point: absl's handler (on the root logger also outside
  absl's app.run), the libraries' INFO lines and benign warnings hidden unless `verbose`, the
  project's lines without absl's file:line prefix, and what cut-short writers leave quiet."""
  logging.use_absl_handler()
  handler = logging.get_absl_handler()
  handler.addFilter(_QuietLibraries(verbose))
  handler.setFormatter(_ConsoleFormat(handler.formatter or logging.PythonFormatter()))
  if not verbose:
    quiet_cut_short_writers()


def _quiet_unraisable(unraisable) -> None:
  """Orbax's writer threads, cut short by a full disk, leave callbacks for an event loop that
  is gone; Python would print each as a traceback. The run's own error line says what
  happened: those are dropped, anything else is printed as usual."""
  if not (isinstance(unraisable.exc_value, RuntimeError)
          and "Event loop is closed" in str(unraisable.exc_value)):
    sys.__unraisablehook__(unraisable)


def quiet_cut_short_writers() -> None:
  """What Orbax's writer threads leave when a full disk cuts them short, dropped so that the
  run's own error line stays its last: "Event loop is closed" tracebacks, and the coroutines
  that were handed to that closed loop, which Python reports as "never awaited" whenever they
  are collected (at exit, after the error line). The project itself has no coroutines."""
  sys.unraisablehook = _quiet_unraisable
  warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited",
                          category=RuntimeWarning)
