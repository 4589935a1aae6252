"""The files of a run: the one owner of a workdir's names, readers and writers.

    WORKDIR/config.json       the resolved config of the first start (config.stepN.json: a
                              resumed start's changed config, beside it)
    WORKDIR/run_info.jsonl    one line per start: time, host, argv, devices, versions, git commit
    WORKDIR/metrics.jsonl     one line per evaluation (what the report and compare read)
    WORKDIR/events.out.tfevents.*   the same scalars for TensorBoard
    WORKDIR/result.json       how the run ended: last evaluation, best by validation, seconds
    WORKDIR/checkpoints/      Orbax (fmnist_jax.checkpointing)
    WORKDIR/report/           the report (fmnist_jax.report)

Writing TensorBoard events needs the `tensorboard` package only, not TensorFlow.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import math
import os
import pathlib
import re
import shutil
import socket
import sys
import time
import types

import ml_collections
import numpy as np
from absl import logging

from fmnist_jax import config_file
from fmnist_jax.errors import ConfigError, ReportError

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
RUN_INFO_FILE = "run_info.jsonl"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
CHECKPOINTS = "checkpoints"
REPORT = "report"


# What a run writes: a directory holding anything else, and no config.json, is not a run's.
RUN_FILES = (CONFIG_FILE, LOCK_FILE, RUN_INFO_FILE, METRICS_FILE, RESULT_FILE, CHECKPOINTS, REPORT,
             "checkpoints_damaged", "config.step*.json", "events.out.tfevents.*",
             ".*.tmp")  # (write_atomically's and the report's temporary files, left by a kill)


def check(workdir: str) -> None:
  """ConfigError for a workdir that must not be trained into: empty (the current directory),
  or an existing directory holding files that are not a run's (a source tree, say)."""
  if not str(workdir).strip():
    raise ConfigError("--workdir is empty: name a directory for the run (it is created if "
                      "missing), e.g. --workdir runs/default.")
  path = pathlib.Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise ConfigError(f"--workdir {workdir} exists and is not a directory: pass a directory "
                      "(it is created if missing).")
  if (path / CHECKPOINTS).exists() and not (path / CHECKPOINTS).is_dir():
    raise ConfigError(f"{path / CHECKPOINTS} is a file, where the run keeps its checkpoints: "
                      "move it away, or pick another --workdir.")
  if not path.is_dir() or (path / CONFIG_FILE).exists():
    return
  foreign = sorted(p.name for p in path.iterdir()
                   if not any(p.match(pattern) for pattern in RUN_FILES))
  if foreign:
    raise ConfigError(
        f"--workdir {workdir} holds files that are not a fmnist_jax run's "
        f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}) and no config.json: "
        "pass a new or empty directory, e.g. --workdir runs/NAME.")


def prepare(workdir: str) -> pathlib.Path:
  """Creates the workdir if needed; a clear error if it is a file or cannot be written.
  Call `check` first (the training loop does, before it reads the data)."""
  path = pathlib.Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f"--workdir {workdir} exists and is not a directory: "
                             "pass a directory (it is created if missing).")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"Cannot create --workdir {workdir}: {e.strerror}.") from e
  if not os.access(path, os.W_OK | os.X_OK):
    raise PermissionError(f"--workdir {workdir} is not writable: pick another directory or "
                          "fix its permissions.")
  return path


class Lock:
  """One run per workdir: an exclusive flock on WORKDIR/.lock, which names its holder. The
  kernel releases it when the process ends, however it ends: a lock is never stale."""

  def __init__(self, workdir: pathlib.Path):
    self._file = open(workdir / LOCK_FILE, "a+")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._file.seek(0)
      holder = self._file.read().strip() or "another process"
      self._file.close()
      raise ConfigError(f"--workdir {workdir} is in use by another run ({holder}): wait for "
                        "it to end or stop it, or pick another --workdir.") from None
    self._file.truncate(0)
    self._file.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
    self._file.flush()

  def release(self) -> None:
    if not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()


def _append_jsonl(path: pathlib.Path, row: dict) -> None:
  """Appends one line; never onto a cut last line (a kill or a full disk leaves one)."""
  with open(path, "ab") as f:
    if f.tell() and not _ends_with_newline(path):
      f.write(b"\n")
    f.write((dumps(row) + "\n").encode())


def _ends_with_newline(path: pathlib.Path) -> bool:
  with open(path, "rb") as f:
    f.seek(-1, 2)
    return f.read(1) == b"\n"


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  """The file's JSON lines; a damaged line is skipped with a warning naming it."""
  if not path.exists():
    return []
  rows = []
  for number, line in enumerate(path.read_bytes().splitlines(), 1):
    try:
      if line.strip():
        rows.append(json.loads(line))
    except ValueError:  # also bad UTF-8
      logging.warning("%s line %d is damaged and skipped: %r", path, number, line[:80])
  return rows


# --- config.json and run_info.jsonl ----------------------------------------------------------

def swap_in(new: pathlib.Path, final: pathlib.Path) -> pathlib.Path:
  """The folder `new` becomes `final`; the old one is removed only once the new one is in
  place."""
  old = final.with_name(f".{final.name}.old.tmp")
  shutil.rmtree(old, ignore_errors=True)
  if final.exists():
    final.rename(old)
  new.rename(final)
  shutil.rmtree(old, ignore_errors=True)
  return final


def write_atomically(path: pathlib.Path, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, then renames it: a full disk or a kill
  leaves the old file (or none), never a half-written one."""
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def record_start(workdir: pathlib.Path, config, parallelism: str, **extra) -> None:
  """Writes config.json (the resolved config) and appends this start to run_info.jsonl."""
  from fmnist_jax import hardware  # (imports jax, which the command-line checks do without)
  config_json = config.to_json_best_effort(indent=2, sort_keys=True)
  config_path = workdir / CONFIG_FILE
  if config_path.exists() and _read_config_text(config_path) != config_json:
    # A resumed run with a changed config: keep the original, record the new one beside it.
    config_path = workdir / f"config.step{extra.get('start_step', 0)}.json"
  if not config_path.exists():
    write_atomically(config_path, config_json)
  info = {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "host": socket.gethostname(), "argv": sys.argv, "parallelism": parallelism,
          **hardware.device_info(), "versions": hardware.package_versions(),
          **hardware.source_revision(), **extra}
  _append_jsonl(workdir / RUN_INFO_FILE, info)


def _read_config_text(path: pathlib.Path) -> str:
  """config.json's text, checked to be JSON: a ConfigError (nothing overwritten) if not."""
  try:
    text = path.read_text()
    if not isinstance(json.loads(text), dict):
      raise ValueError("not a JSON object of config fields")
    return text
  except ValueError as e:  # UnicodeDecodeError and JSONDecodeError both
    raise ConfigError(f"{path} is damaged ({type(e).__name__}: {str(e)[:100]}): restore it, "
                      "or move it away to record this run's config anew.") from e


def read_config(workdir) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise ReportError(f"{workdir} has no config.json: it is not a fmnist_jax workdir "
                      "(train into it with `python -m fmnist_jax.main --workdir ...`).")
  return layered(json.loads(_read_config_text(path)), path)


def layered(recorded: dict, where="a recorded config") -> ml_collections.ConfigDict:
  """A recorded config (a workdir's config.json) laid over today's defaults
  (configs/default.py, the one owner of every default): a field added since it was written
  reads its default, so no reader restates one. A config recorded with flat names (before the
  sections) is read through config_file.RENAMED. A field that no longer exists is named in one
  warning and left out."""
  from configs import default
  config = default.get_config()
  if not all(isinstance(value, dict) for value in recorded.values()):
    recorded = config_file.from_flat(recorded)
  gone = [section for section in recorded if section not in config]
  for section in set(recorded) & set(config):
    gone += [f"{section}.{field}" for field in recorded[section]
             if field not in config[section]]
    for field in set(recorded[section]) & set(config[section]):
      try:
        config[section][field] = recorded[section][field]
      except (TypeError, ValueError):  # (a hand-edited file: one line, not ml_collections')
        default_value = config[section][field]
        raise ConfigError(f"{where}: {section}.{field}={recorded[section][field]!r} is not of "
                          f"the kind of configs/default.py's {default_value!r} "
                          f"({type(default_value).__name__}): correct it there.") from None
  if gone:
    logging.warning("%s: %s no longer config field(s); ignored", where, ", ".join(sorted(gone)))
  return config


def by_path(config) -> dict:
  return {path: value for section, fields in json.loads(config.to_json_best_effort()).items()
          for path, value in ((f"{section}.{f}", v) for f, v in fields.items())}


def config_changes(workdir, config) -> dict[str, tuple]:
  """{path: (recorded, now)} for each "section.field" that differs from the config this
  workdir recorded last (config.json, or the newest config.stepN.json); {} for a new run."""
  workdir = pathlib.Path(workdir)
  recorded = sorted((p for p in workdir.glob("config.step*.json")
                     if re.fullmatch(r"config\.step\d+\.json", p.name)),  # (not a stray copy)
                    key=lambda p: int(p.stem.removeprefix("config.step")))
  path = recorded[-1] if recorded else workdir / CONFIG_FILE
  if not path.exists():
    return {}
  old = by_path(layered(json.loads(_read_config_text(path)), path))
  new = by_path(config)
  return {field: (old.get(field), new.get(field)) for field in sorted(set(old) | set(new))
          if old.get(field) != new.get(field)}


# Fields that change what a saved step count means: a resume with another value would take the
# step count of one run for a position in another.
STEP_FIELDS = ("run.batch_size", "data.validation_size")


def check_resume(workdir: pathlib.Path, config) -> None:
  """The resume policy: says what changed since the workdir's last start; refuses a change of
  STEP_FIELDS when there are checkpoints to resume from, unless
  config.checkpoints.resume_with_changed_steps."""
  from fmnist_jax.checkpointing import complete_steps
  changes = config_changes(workdir, config)
  if not changes:
    return
  logging.warning("the config differs from the one this workdir recorded last: %s", "; ".join(
      f"{field} {old!r} -> {new!r}" for field, (old, new) in changes.items()))
  changed = [field for field in STEP_FIELDS if field in changes]
  resumable = bool(complete_steps(workdir / CHECKPOINTS))
  if "population.members" in changes and resumable:
    raise ConfigError(f"{workdir} holds checkpoints of another population "
                      f"({changes['population.members'][0]!r}): resume it with that population, or "
                      "use a new --workdir.")
  if changed and resumable and not config.checkpoints.resume_with_changed_steps:
    raise ConfigError(
        f"resuming {workdir} with a changed {', '.join(changed)} ("
        + ", ".join(f"{f} {changes[f][0]} -> {changes[f][1]}" for f in changed)
        + ") would reinterpret its saved step count: use a new --workdir, or "
        "--config.checkpoints.resume_with_changed_steps=True to continue from the saved step "
        "anyway.")


def read_run_info(workdir) -> list[dict]:
  """One dict per start of the run, oldest first."""
  return _read_jsonl(pathlib.Path(workdir) / RUN_INFO_FILE)


# --- metrics.jsonl and TensorBoard -----------------------------------------------------------

METRICS_REQUIRED = ("step", "epoch", "train_loss", "train_accuracy", "test_loss",
                    "test_accuracy")


def read_metrics(workdir, required: bool = False) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl, one per evaluation ([] if none yet, or a ReportError
  when `required`)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  rows = []
  for row in _read_jsonl(path):
    missing = [key for key in METRICS_REQUIRED if key not in row]
    if missing:
      logging.warning("%s: the row %.80s lacks %s and is skipped", path, json.dumps(row),
                      ", ".join(missing))
    else:
      rows.append(row)
  if required and not rows:
    raise ReportError(f"{workdir} has no metrics.jsonl (or it is empty): the run recorded no "
                      "evaluation yet (it is still in its first epoch, or stopped before its "
                      "end). Train at least one epoch first.")
  return rows


def by_member(rows: list[dict]) -> dict[int, list[dict]]:
  """Each member's metrics rows by its index (a single run's: member 0), in their order."""
  members = {}
  for row in rows:
    members.setdefault(row.get("member", 0), []).append(row)
  return members


def best_by_val(rows: list[dict], steps=None) -> dict | None:
  """The evaluation row with the highest validation accuracy, among `steps` if given (e.g. the
  checkpoints kept); None without a validation split. The one rule for "best": chosen on
  validation, never on test."""
  scored = [row for row in rows if row.get("val_accuracy") is not None
            and (steps is None or row.get("step") in steps)]
  return max(scored, key=lambda row: row["val_accuracy"]) if scored else None


def _py(value):
  return np.asarray(value).item()


def dumps(obj, **kwargs) -> str:
  """JSON as strict parsers (jq, JavaScript) read it: a NaN or infinite number is written
  null (Python's json writes a bare NaN, which is not JSON); json.loads reads both."""
  def strict(value):
    if isinstance(value, float) and not math.isfinite(value):
      return None
    if isinstance(value, dict):
      return {key: strict(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [strict(v) for v in value]
    return value
  return json.dumps(strict(obj), allow_nan=False, **kwargs)


ROW_KEY = ("step", "member")  # what names a row (a single run's rows have no member)


def _row_key(row: dict) -> tuple[int, int]:
  return row.get("step", 0), row.get("member", 0)


class MetricsWriter:
  """Each evaluation's scalars: a row of metrics.jsonl and TensorBoard events; each progress
  line's scalars and the config's hyperparameters: TensorBoard only (no TensorFlow:
  tensorboard's own event writer)."""

  def __init__(self, workdir: pathlib.Path):
    # The event writer makes a folder and opens a local file through tensorboard.compat.tf,
    # which is all of TensorFlow when that is installed (seconds of start-up); tensorboard's
    # own "notf" switch makes it use its built-in stub instead.
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    self.workdir = pathlib.Path(workdir)
    self._events = EventFileWriter(str(self.workdir))
    self._recorded = None  # steps already in metrics.jsonl, read at the first write only

  def write_scalars(self, step: int, scalars: dict, tag: str = "") -> None:
    """A row, into metrics.jsonl and into TensorBoard below `tag` (population.tensorboard_tag:
    memberNN/ for one of several members)."""
    row = {"step": int(step), **{k: v if isinstance(v, (list, tuple)) else _py(v)
                                 for k, v in scalars.items()}}
    path = self.workdir / METRICS_FILE
    key = _row_key(row)
    if self._recorded is None:  # a resumed run: the file may already hold this step
      self._recorded = {_row_key(r) for r in _read_jsonl(path)}
    if key in self._recorded:
      # Written again after a resume (killed between this row and its checkpoint): the new
      # row replaces the old one, atomically.
      rows = sorted([r for r in _read_jsonl(path) if _row_key(r) != key] + [row], key=_row_key)
      write_atomically(path, "".join(dumps(r) + "\n" for r in rows))
    else:
      _append_jsonl(path, row)
      self._recorded.add(key)
    self._add_scalars(step, {tag + k: v for k, v in row.items() if k not in ROW_KEY
                             and isinstance(v, (int, float))})

  def write_progress(self, step: int, scalars: dict) -> None:
    """A progress line's scalars (train loss and accuracy so far this epoch, learning rate,
    images/s), as `progress/NAME`."""
    self._add_scalars(step, {f"progress/{k}": v for k, v in scalars.items()}, flush=False)

  def write_hparams(self, config) -> None:
    """The config's fields as TensorBoard hyperparameters, by path (tuples as text)."""
    from tensorboard.plugins.hparams import summary_v2
    hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
               for k, v in by_path(config).items()}
    self._add(0, summary_v2.hparams_pb(hparams))

  def _add_scalars(self, step: int, scalars: dict, flush: bool = True) -> None:
    from tensorboard.compat.proto import summary_pb2
    self._add(step, summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]),
              flush)

  def _add(self, step: int, summary, flush: bool = True) -> None:
    """Queued for the writer's thread; `flush` waits until it is on disk (evaluations: yes;
    progress lines: no, the next flush or close writes them)."""
    from tensorboard.compat.proto import event_pb2
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))
    if flush:
      self._events.flush()

  def close(self) -> None:
    self._events.close()


# --- result.json -----------------------------------------------------------------------------

def write_result(workdir, **result) -> None:
  """WORKDIR/result.json: how the run ended and its summary (population.result)."""
  result["end_unix_time"] = time.time()
  write_atomically(pathlib.Path(workdir) / RESULT_FILE, dumps(result, indent=1) + "\n")


def finished(step: int, total_steps: int, reached: bool) -> bool:
  """Whether a run restored at `step` has nothing left to train: it reached total_steps, or
  every member stopped (`reached`: none trains, from the checkpoint's statuses checked against
  today's stop_at_accuracy). Says so."""
  if step < total_steps and not reached:
    return False
  logging.warning("already finished at step %d of %d%s: nothing to train (raise %s to train "
                  "on, or use a new --workdir)", step, total_steps,
                  " (stop_at_accuracy reached)" if reached else "",
                  "eval.stop_at_accuracy" if reached else "run.num_epochs or run.num_train_steps")
  return True


def result_is_current(workdir, step: int) -> bool:
  """Whether result.json describes `step` (not missing, stale or cut short by a kill after the
  last checkpoint)."""
  return (read_result(workdir) or {}).get("step") == step


def read_result(workdir) -> dict | None:
  """result.json, or None if there is none or it is damaged (a warning names it)."""
  path = pathlib.Path(workdir) / RESULT_FILE
  try:
    result = json.loads(path.read_text()) if path.exists() else None
  except ValueError as e:  # (a kill or a full disk cut it short)
    logging.warning("%s is damaged and ignored (%s)", path, str(e)[:100])
    return None
  return result if isinstance(result, dict) else None
