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


class Checkpointer:

  def __init__(self, directory: pathlib.Path, config, read_only: bool = False):
    keep = [policies.LatestN(n=config.keep_checkpoints)]
    if config.validation_size and config.keep_best_checkpoints:
      keep.append(policies.BestN(get_metric_fn=lambda m: m["val_accuracy"],
                                 n=config.keep_best_checkpoints,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=config.async_checkpointing, create=not read_only,
        read_only=read_only)
    self.manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)

  def save(self, step: int, state, metrics=None) -> None:
    if step in self.manager.all_steps():  # e.g. a periodic save that fell on an epoch end
      return
    self.manager.save(step, args=ocp.args.StandardSave(_saved_tree(state)), metrics=metrics)

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
