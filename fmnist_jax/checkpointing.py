"""Orbax checkpoints in WORKDIR/checkpoints: the latest N plus the best N by val accuracy.

Saves are asynchronous (training goes on while the files are written). Checkpoints hold global,
unreplicated arrays, so a run saved on 8 devices restores on 1 and the other way round.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


def _saved_tree(state):
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
          "dropout_key": state.dropout_key}


def _val_accuracy(metrics) -> float:
  return metrics["val_accuracy"]


class Checkpointer:

  def __init__(self, directory: pathlib.Path, config, read_only: bool = False):
    keep = [policies.LatestN(n=config.keep_checkpoints)]
    track_best = bool(config.validation_size)
    if track_best and config.keep_best_checkpoints:
      keep.append(policies.BestN(get_metric_fn=_val_accuracy, n=config.keep_best_checkpoints,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep),
        # Orbax writes each checkpoint's metrics to disk only when best_fn is set: without
        # them a restarted run (or the report) could not tell which checkpoint is best.
        best_fn=_val_accuracy if track_best else None, best_mode="max",
        enable_async_checkpointing=config.async_checkpointing, create=not read_only,
        read_only=read_only)
    self.manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)

  def save(self, step: int, state, metrics=None) -> None:
    if step in self.manager.all_steps():  # e.g. a periodic save that fell on an epoch end
      return
    self.manager.save(step, args=ocp.args.StandardSave(_saved_tree(state)), metrics=metrics)

  def best_step(self) -> int | None:
    """The kept step with the highest validation accuracy; None if none has one.

    (Orbax's own best_step() needs options.best_fn and silently returns the latest step
    without it; retention here is a preservation policy, so the metrics are read directly.)
    """
    scored = [(metrics["val_accuracy"], step) for step in self.manager.all_steps()
              if (metrics := self.manager.metrics(step)) and "val_accuracy" in metrics]
    return max(scored)[1] if scored else None

  def restore(self, step: int, state):
    """Restores `step` into the structure, shapes and shardings of `state`."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saved_tree(state))
    restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
    return state.replace(**restored)

  def restore_latest(self, state):
    step = self.manager.latest_step()
    return state if step is None else self.restore(step, state)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
