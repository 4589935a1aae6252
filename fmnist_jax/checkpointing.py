"""Orbax checkpoints in WORKDIR/checkpoints: the latest N plus the best N by val accuracy.

Saves are asynchronous (training goes on while the files are written; the training loop calls
`save` when the device has work queued, since its Python part takes tens of milliseconds).
Checkpoints hold global, unreplicated arrays, so a run saved on 8 devices restores on 1 and the
other way round.

Damage: Orbax writes each checkpoint to a temporary directory and renames it when complete, so
a save cut short by a kill never looks like a checkpoint. A checkpoint damaged afterwards
(truncated or corrupted files, or array data changed but still readable, which the checksums
saved with every checkpoint reveal) fails to restore: `restore_latest` falls back to the next newest
and moves the damaged one, with a warning, to WORKDIR/checkpoints_damaged/ (nothing is deleted);
if none restores, it stops with an error and moves nothing.
A checkpoint whose parameter shapes differ from the config's is not damage but a config
mismatch: a CheckpointError naming the shapes, and nothing is moved.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P
from orbax.checkpoint import checkpoint_managers as policies

from fmnist_jax import steps as steps_lib
from fmnist_jax.errors import CheckpointError, DiskFullError, NonFiniteError


STATUS_KEYS = ("status", "status_step")

_squeeze = jax.jit(lambda tree: jax.tree.map(lambda x: x[0], tree))  # one program per tree
_unsqueeze = jax.jit(lambda tree: jax.tree.map(lambda x: x[None], tree))


def _as_is(tree):
  return tree


@dataclasses.dataclass(frozen=True)
class _Form:
  """How a state is written: `drop` leading (member) axes left out (`write` and `read`
  convert), its hparams under `key`, those in `kept` only (None: all)."""
  drop: int
  key: str
  kept: tuple | None
  write: Any = _as_is
  read: Any = _as_is


def _form(state) -> _Form:
  """A run of one member ([1] leading axis) is written as a single run's checkpoints always
  were: without the member axis (the seed's shapes, which plain Orbax readers and older
  workdirs have) and, of its hparams (the config's values), only its status. Several members:
  as they are, with every hparam."""
  if np.shape(state.step) == (1,):
    return _Form(1, "status", STATUS_KEYS, _squeeze, _unsqueeze)
  return _Form(0, "hparams", None)


def _saved_tree(state, form: _Form):
  tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
          "dropout_key": state.dropout_key}
  if state.ema_params is not None:
    tree["ema_params"] = state.ema_params
  tree[form.key] = {key: value for key, value in state.hparams.items()  # statuses, values
                    if form.kept is None or key in form.kept}
  return tree


def _restored_hparams(state, restored: dict):
  """The state's hparams with what the checkpoint held. A checkpoint from before the statuses
  held `active` (training or not): a member that was not is REACHED at the checkpoint's step
  (population.reopen then checks it against its row)."""
  saved = {**(restored.pop("hparams", None) or {}), **(restored.pop("status", None) or {})}
  hparams = {**state.hparams, **{k: v for k, v in saved.items() if k in state.hparams}}
  if "active" in saved and "status" not in saved:
    active = saved["active"]
    hparams["status"] = jnp.where(active, steps_lib.TRAINING, steps_lib.REACHED).astype(
        state.hparams["status"].dtype)
    hparams["status_step"] = jnp.where(active, 0, restored["step"]).astype(
        state.hparams["status_step"].dtype)
  return hparams


@jax.jit
def _checksums(tree):
  """One uint32 per array of `tree`: its elements' bits, each weighted by its position, summed
  (wrapping). Any changed byte changes it (almost surely): the check that a restored
  checkpoint holds what was saved (Orbax checks the structure, not the data)."""
  def one(x):
    if x.dtype.itemsize == 4:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:
      bits = x.astype(jnp.uint32)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) % 65521 + 1
    return jnp.sum(bits.reshape(-1) * weights, dtype=jnp.uint32) + jnp.uint32(bits.size)
  return jnp.stack([one(x) for x in jax.tree.leaves(tree)])


def _host(x) -> np.ndarray:
  """A replicated global array's value on this process."""
  return np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)


def _on_disk(state) -> dict:
  """`state`'s saved tree as it is written (in its form's shapes)."""
  form = _form(state)
  return form.write(_saved_tree(state, form))


def _target(state):
  """The restore target: `state`'s saved tree as shapes, dtypes and shardings (those of the
  axes written)."""
  form = _form(state)

  def written(x):
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding):
      sharding = NamedSharding(sharding.mesh, P(*sharding.spec[form.drop:]))
    return jax.ShapeDtypeStruct(np.shape(x)[form.drop:], x.dtype, sharding=sharding)
  return jax.tree.map(written, _saved_tree(state, form))


class DamagedError(CheckpointError):
  """A checkpoint whose data is not what was saved: damage (moved aside, the previous one
  used), not a config mismatch."""


def complete_steps(directory: pathlib.Path) -> list[int]:
  """The steps whose checkpoint folder is complete, oldest first: Orbax writes each into
  `STEP.orbax-checkpoint-tmp` and renames it to `STEP` when done."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def disk_full(directory: pathlib.Path, error: Exception) -> DiskFullError:
  """One line for a full disk: where, what is saved, how to go on."""
  saved = complete_steps(directory)
  what = (f"the last complete checkpoint is step {saved[-1]} (a save cut short is never taken "
          "for one)" if saved else "no checkpoint was complete yet")
  return DiskFullError(
      f"no space left on the device holding {directory.parent} ({type(error).__name__} while "
      f"writing; {what}). Free space there, or move the workdir to a larger disk, then run the "
      "same command again to resume.")


def _val_accuracy(metrics) -> float:
  return metrics["val_accuracy"]


class Checkpointer:

  def __init__(self, directory: pathlib.Path, config, read_only: bool = False):
    keep = [policies.LatestN(n=config.checkpoints.keep)]
    track_best = bool(config.data.validation_size)
    if track_best and config.checkpoints.keep_best:
      keep.append(policies.BestN(get_metric_fn=_val_accuracy, n=config.checkpoints.keep_best,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep),
        # Orbax writes each checkpoint's metrics to disk only when best_fn is set: without
        # them a restarted run (or the report) could not tell which checkpoint is best.
        best_fn=_val_accuracy if track_best else None, best_mode="max",
        enable_async_checkpointing=config.checkpoints.asynchronous, create=not read_only,
        read_only=read_only)
    self.directory = pathlib.Path(directory).absolute()
    self.manager = None
    self._set_aside_unreadable_metadata(read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=ocp.StandardCheckpointHandler())
    self._saved = set(self.manager.all_steps())

  def save(self, step: int, state, metrics=None, epoch_sums=None) -> None:
    """Saves `state` (and the epoch's running train sums, host values, if given) as `step`,
    unless that step is saved already (e.g. a periodic save that fell on an epoch end)."""
    if step in self._saved:
      return
    self._saved.add(step)
    tree = _on_disk(state)
    tree["checksums"] = _host(_checksums(tree))
    if epoch_sums is not None:  # (as many values as the tree has members)
      tree["epoch_sums"] = {key: np.reshape(value, np.shape(tree["step"]))
                            for key, value in epoch_sums.items()}
    self.manager.save(step, args=ocp.args.StandardSave(tree), metrics=metrics)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  @staticmethod
  def prepare(state) -> None:
    """Compiles the saves' checksum program now, before the training clock starts."""
    _checksums(_on_disk(state))

  def reached_preemption(self, call: int) -> bool:
    """Several processes: whether all agreed to stop at `call` (JAX's preemption sync service,
    started by jax.distributed.initialize, gets the notice on any of them)."""
    return self.manager.reached_preemption(call)

  def check_compatible(self, step: int, state) -> dict:
    """CheckpointError naming every parameter whose saved shape differs from `state`'s (the
    optimizer state mirrors the parameters, so checking these finds a model mismatch).
    Returns the checkpoint's metadata tree."""
    saved = self.manager.item_metadata(step)
    saved = dict(saved.tree if hasattr(saved, "tree") else saved)
    target = _target(state)
    mismatches = [f"{key}: in one of the checkpoint and the config only"
                  for key in ("params", "ema_params") if (key in saved) != (key in target)]
    saved_shapes = {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf
                    in jax.tree_util.tree_flatten_with_path(saved["params"])[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(target["params"])[0]:
      name, shape = jax.tree_util.keystr(path), tuple(np.shape(leaf))
      saved_shape = saved_shapes.pop(name, None)
      if saved_shape is None:
        mismatches.append(f"params{name}: only in the config")
      elif saved_shape != shape:
        mismatches.append(f"params{name}: checkpoint {saved_shape}, config {shape}")
    mismatches += [f"params{name}: only in the checkpoint" for name in saved_shapes]
    saved_opt, target_opt = (len(jax.tree.leaves(saved.get("opt_state"))),
                             len(jax.tree.leaves(target["opt_state"])))
    if saved_opt != target_opt:
      mismatches.append(f"opt_state: {saved_opt} arrays in the checkpoint, {target_opt} for this "
                        "config's optimizer (another optimizer or skip_nonfinite_updates?)")
    if mismatches:
      raise CheckpointError(
          f"checkpoint {self.directory / str(step)} does not match this config (was it written "
          "with other model.conv_features / dense_features, optimizer.name or "
          "optimizer.ema_decay?):\n  - "
          + "\n  - ".join(mismatches[:20])
          + "\nUse the config it was written with, or a new --workdir.")
    return saved

  def restore(self, step: int, state):
    """Restores `step` into the structure, shapes and shardings of `state`. Returns the state
    and the checkpoint's extras: {"epoch_sums": the running train sums of the epoch it was
    saved in} (host values; {} for a checkpoint saved without them), so that a resumed epoch's
    averages cover all of its steps."""
    saved = self.check_compatible(step, state)
    target = _target(state)
    sharding = target["step"].sharding
    for key in ("hparams", "status"):  # as this checkpoint holds them (an older one: fewer)
      held, mine = dict(saved.get(key) or {}), target.pop(key, {})
      if held:  # (a state without them, e.g. state.initial_state's, reads them and drops them)
        target[key] = {k: mine[k] if k in mine else jax.ShapeDtypeStruct(
            meta.shape, meta.dtype, sharding=sharding) for k, meta in held.items()}
    if "epoch_sums" in saved:  # restored as numpy, in their saved shapes and dtypes
      target["epoch_sums"] = {key: np.zeros(meta.shape, meta.dtype)
                              for key, meta in dict(saved["epoch_sums"]).items()}
    if "checksums" in saved:  # (saved since they were)
      target["checksums"] = np.zeros(saved["checksums"].shape, np.uint32)
    restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
    extras = {"epoch_sums": restored.pop("epoch_sums")} if "epoch_sums" in restored else {}
    expected = restored.pop("checksums", None)
    if expected is not None and not np.array_equal(_host(_checksums(restored)), expected):
      raise DamagedError(f"checkpoint {self.directory / str(step)}: its arrays differ from "
                         "the checksums saved with them (its data is damaged)")
    restored = _form(state).read(restored)
    extras = {key: {k: np.reshape(v, np.shape(state.step)) for k, v in value.items()}
              for key, value in extras.items()}  # (in the state's shapes)
    hparams = _restored_hparams(state, restored)
    return state.replace(**restored, hparams=hparams), extras

  def restore_latest(self, state):
    """(state, extras) of the newest checkpoint that restores ((state, {}) when there is
    none). Damaged newer ones are then moved aside, with a warning; if none restores, a
    CheckpointError and nothing is moved."""
    failures = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.restore(step, state)
      except CheckpointError as e:
        if not isinstance(e, DamagedError):
          raise
        failures.append((step, e))
        continue
      except Exception as e:  # pylint: disable=broad-except  (any failure to read = damage)
        failures.append((step, e))
        continue
      for damaged_step, error in failures:
        self._move_aside(damaged_step, error)
      return restored
    if failures:
      raise CheckpointError(
          f"none of the checkpoints in {self.directory} can be restored (steps "
          f"{', '.join(str(step) for step, _ in failures)}; the newest fails with "
          f"{type(failures[0][1]).__name__}: {str(failures[0][1]).splitlines()[0][:300]}). "
          "Nothing was changed: restore them from a copy, or use a new --workdir (or move "
          "checkpoints/ away) to train from scratch.")
    return state, {}

  def _set_aside_unreadable_metadata(self, read_only: bool) -> None:
    """Orbax's manager cannot even open a directory holding a checkpoint whose metadata file
    is damaged: such checkpoints are moved aside first (unless none would be left)."""
    steps = complete_steps(self.directory)
    damaged = []
    for step in steps:
      step_dir = self.directory / str(step)
      try:  # the JSON files the manager reads when it opens: metadata and saved metrics
        for path in (step_dir / "_CHECKPOINT_METADATA", step_dir / "metrics" / "metrics"):
          if path.is_file():
            json.loads(path.read_text())
      except (OSError, ValueError) as e:
        damaged.append((step, e))
    if damaged and (read_only or len(damaged) == len(steps)):
      raise CheckpointError(
          f"checkpoints {', '.join(str(s) for s, _ in damaged)} in {self.directory} have "
          "damaged metadata" + (" and no other checkpoint is there" if not read_only else "")
          + ". Nothing was changed: restore them from a copy, or use a new --workdir (or move "
          "checkpoints/ away) to train from scratch.")
    for step, error in damaged:
      self._move_aside(step, error)

  def _move_aside(self, step: int, error: Exception) -> None:
    damaged = self.directory.parent / "checkpoints_damaged"
    destination = damaged / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    logging.warning("checkpoint %s cannot be restored (%s: %s); moving it to %s and falling "
                    "back to the previous one", self.directory / str(step),
                    type(error).__name__, str(error).splitlines()[0][:300], destination)
    if jax.process_index() == 0:
      damaged.mkdir(exist_ok=True)
      shutil.move(str(self.directory / str(step)), str(destination))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    if self.manager is not None:
      self.manager.reload()
      self._saved = set(self.manager.all_steps())

  def close(self) -> None:
    """Waits for every save to be complete on disk; closes the manager also when a save
    failed (a full disk), so that no Orbax thread is left to run at interpreter shutdown."""
    try:
      self.manager.wait_until_finished()
    finally:
      self.manager.close()


def status_of(state):
  """(hparams["status"], hparams["status_step"]) of `state`, to fetch with other values."""
  return state.hparams["status"], state.hparams["status_step"]


@dataclasses.dataclass
class _Request:
  step: int
  state: Any          # the state at `step` (a copy, when training goes on)
  sums: Any           # the run's counters and the epoch's running train sums at `step`
  row: dict | None    # an evaluation's scalars, written with it (metrics.jsonl, best_fn)
  always: bool        # saved whatever checkpoints.every_seconds says


class Saver:
  """When the state is written. Each save is requested with the state at its step and written
  by `flush`, which the loop calls once the device has later calls queued, so that no save
  waits for the device: requests are written oldest first, never past a non-finite step, and
  an evaluation's row always, its checkpoint at most every checkpoints.every_seconds (unless
  `always`: the run's last state)."""

  def __init__(self, ckpt: Checkpointer, config, fetch, write_row, names: tuple = (),
               diverged_before=()):
    self.ckpt, self.fetch, self.write_row = ckpt, fetch, write_row
    self.names = names  # population.names: who diverged, where several models train
    self.named: set[int] = set(diverged_before)  # members named as diverged (by an earlier run)
    # Several processes must all save the same steps: a clock of their own would not agree.
    self.every_seconds = config.checkpoints.every_seconds if jax.process_count() == 1 else 0.0
    self.skip_nonfinite = config.optimizer.skip_nonfinite_updates
    self.requests: list[_Request] = []
    self.last_save = time.perf_counter()  # (a restored checkpoint was just read)

  def request(self, step: int, state, sums, row: dict | None = None,
              always: bool = False) -> None:
    self.requests.append(_Request(step, state, sums, row, always))

  def check_finite(self, sums, status, row: dict | None = None) -> None:
    """Reads the members' statuses (host values of hparams["status"], ["status_step"]): each
    member that diverged is named once, with the step (it stopped there, its state from before,
    and the others go on); NonFiniteError once every member has, or if an evaluation `row` of
    the members that did not holds a NaN/inf. `sums` (host values) tell a NaN/inf step from
    parameters made NaN/inf (optax gives up skipping after 5 in a row)."""
    codes, at = np.atleast_1d(status[0]), np.atleast_1d(status[1])
    diverged = np.flatnonzero(codes == steps_lib.DIVERGED)
    fresh = [i for i in diverged if i not in self.named]
    self.named.update(fresh)
    nan_row = [key for key, value in (row or {}).items()
               if isinstance(value, float) and not math.isfinite(value)]
    if len(diverged) < len(codes) and not nan_row:
      for index in fresh:
        logging.warning("member %d (%s) diverged (NaN/inf) at step %d: it stopped there, with "
                        "its state from before; the others go on", index, self.names[index],
                        at[index])
      return
    if not len(diverged) and not nan_row:
      return
    where = (f"at step {', '.join(str(at[i]) for i in diverged)}" + self._which(diverged)
             if len(diverged) else "")
    if int(np.sum(sums["nonfinite"])) and not self.skip_nonfinite:
      raise NonFiniteError(
          f"non-finite loss or gradient {where}: the run stopped without saving it, and the "
          "checkpoints already written are intact. "
          + self._advice(" (it changes the optimizer state)"))
    raise NonFiniteError(
        f"the model diverged {where or 'in its last epoch'} ("
        + (f"{', '.join(nan_row)} NaN/inf" if nan_row else "its parameters NaN/inf")
        + ("; skipped updates are applied after 5 in a row" if self.skip_nonfinite else "")
        + "). The run stopped without saving it; the checkpoints already written are intact. "
        + self._advice(""))

  def _which(self, members) -> str:
    """", in members 1 (learning_rate=1e+37 seed=1)"; "" for a single run."""
    if not self.names:
      return ""
    return ", in members " + ", ".join(f"{i} ({self.names[i]})" for i in members)

  def _advice(self, skipping: str) -> str:
    """What works: the config's learning rate, or a population's values, which its workdir
    keeps (a population resumes only with the values it was started with); skipping such
    updates only where the run does not already."""
    skip = ("" if self.skip_nonfinite else
            " or drop such updates with --config.optimizer.skip_nonfinite_updates=True"
            f"{skipping}")
    if not self.names:
      return ("Lower optimizer.learning_rate and run the same command again (it resumes from "
              "the last checkpoint)" + (f", {skip.strip()} in a new --workdir" if skip else "")
              + ".")
    return ("A population's values are its workdir's: train it in a new --workdir with lower "
            "values" + (f",{skip}" if skip else "") + ".")

  def flush(self, checked_only: bool = False) -> int:
    """Writes every request, oldest first (`checked_only`: those whose evaluation checked
    them; the others are dropped, as when an error ends the run). Returns how many
    checkpoints it wrote."""
    requests, self.requests = sorted(self.requests, key=lambda r: r.step), []
    written = 0
    for request in requests:
      if checked_only and request.row is None:
        continue
      sums = request.sums
      if any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(sums)):
        sums, status = self.fetch((sums, status_of(request.state)))
        self.check_finite(sums, status)
      if request.row is not None:
        self.write_row(request.step, request.row)
      now = time.perf_counter()
      if request.row is None or request.always or now - self.last_save >= self.every_seconds:
        self.ckpt.save(request.step, request.state, metrics=request.row, epoch_sums=sums)
        self.last_save, written = now, written + 1
    return written

  def drop_after(self, step: int) -> None:
    self.requests = [r for r in self.requests if r.step <= step]
