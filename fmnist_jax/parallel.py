"""The only module that knows `jit` over a Mesh from `pmap`.

Both modes wrap the *same* step functions from steps.py and look the same from outside:

- the train state is a global, replicated array tree (so checkpoints hold plain global arrays
  and restore on any device count);
- batches are global arrays sharded along the batch axis over all devices of all processes,
  built from each process's local part (`shard`);
- `compile_train` / `compile_eval` return callables `(state, batch) -> (state, metrics)` and
  `(params, batch) -> metrics` with metrics already summed over devices.

jit: `jax.jit` with `NamedSharding`s; XLA's partitioner inserts the gradient all-reduce, and the
dropout mask of the global batch does not depend on the device count (partitionable threefry).
pmap: `jax.pmap` with the state unmapped (`in_axes=None`, `out_axes=None`), the batch mapped
over a device axis, `lax.pmean` of gradients and `lax.psum` of metrics inside the step (the step
gets `axis_name`), and a per-device dropout key.

Every run is a population (fmnist_jax.population; a single run has one member): a leading
member axis on every state leaf, train batches (steps, members, batch, ...). The devices form a
(members, data) mesh of `member_shards` device groups: jit splits the member axis over the first
(each group trains its own members: no gradient all-reduce between groups; one group, the
single run's case, holds every member) and each member's batch over the second. pmap: one
group, every device holds every member and a part of each member's batch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fmnist_jax.errors import ConfigError

AXIS = "data"
MEMBERS = "members"
MODES = ("jit", "pmap")


class Parallelism:
  """Device mesh + how batches are laid out + how steps are compiled, for one mode."""

  def __init__(self, mode: str = "jit", devices=None, member_shards: int = 1):
    if mode not in MODES:
      raise ValueError(f"parallelism={mode!r} is not one of {MODES}.")
    self.mode, self.member_shards = mode, member_shards
    self.devices = list(devices if devices is not None else jax.devices())
    self.mesh = Mesh(np.array(self.devices).reshape(member_shards, -1), (MEMBERS, AXIS))
    self.num_devices = len(self.devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.num_local_devices = len(self.local_devices)
    self.num_processes = len({d.process_index for d in self.devices})
    self.replicated = NamedSharding(self.mesh, P())
    # The train state's (and its metric sums') placement: by member over the device groups
    # (one group: replicated).
    self.state_sharding = NamedSharding(self.mesh, P(MEMBERS))
    # XLA's CPU runtime can deadlock (all-reduce rendezvous timeouts) when several programs with
    # cross-device collectives are in flight at once on a few cores: there, compiled steps
    # complete before they return. Accelerators queue them safely and keep async dispatch.
    self.synchronous = self.devices[0].platform == "cpu" and self.num_devices > 1

  def __repr__(self):
    return (f"Parallelism({self.mode}, {self.num_devices} devices, "
            f"{self.num_processes} processes)")

  # --- checks -----------------------------------------------------------------------------

  def check_batch_size(self, batch_size: int, name: str = "run.batch_size") -> None:
    if batch_size % self.num_devices:
      raise ConfigError(
          f"{name} {batch_size} is not divisible by the {self.num_devices} devices "
          f"({self.num_processes} process(es)). Choose a multiple of {self.num_devices}, "
          f"e.g. --config.{name}="
          f"{max(1, round(batch_size / self.num_devices)) * self.num_devices}.")

  def local_batch_size(self, global_batch_size: int) -> int:
    return global_batch_size // self.num_processes

  # --- placement --------------------------------------------------------------------------

  def replicate(self, tree):
    """Host values (the same on every process) -> global arrays replicated on every device."""
    return self._place(tree, self.replicated)

  def place_state(self, tree):
    """Host values of the train state (or its metric sums) -> global arrays split by member
    over the device groups."""
    return self._place(tree, self.state_sharding)

  @staticmethod
  def _place(tree, sharding):
    def put(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(put, tree)

  def _batch_spec(self, batch_axis: int) -> P:
    # jit: the batch axis is sharded; pmap: the device axis, inserted at the batch axis. Train
    # batches (batch_axis >= 2) have the member axis just before, split over the groups.
    members = (MEMBERS,) if batch_axis >= 2 else ()
    return P(*([None] * (batch_axis - len(members))), *members, AXIS)

  def _global_replica(self, x):
    """pmap's unmapped outputs are process-local arrays: view them as one global array."""
    if self.num_processes == 1:
      return x
    return jax.make_array_from_single_device_arrays(
        x.shape, self.replicated, [shard.data for shard in x.addressable_shards])

  def shard(self, local_tree, batch_axis: int = 0):
    """This process's part of a global batch (host arrays) -> global arrays for the step.

    jit: the batch axis is sharded over the devices. pmap: the batch axis is split into
    (devices, per-device batch) and the new device axis is sharded.
    """
    sharding = self._batch_sharding(batch_axis)

    def put(x):
      x = np.asarray(x)
      if self.mode == "pmap":
        shape = x.shape
        x = x.reshape(shape[:batch_axis] + (self.num_local_devices, -1) + shape[batch_axis + 1:])
      return jax.make_array_from_process_local_data(sharding, x)
    return jax.tree.map(put, local_tree)

  def batch_layout(self, x, batch_axis: int = 0):
    """Inside jit: a global batch array -> the step's layout, with its sharding constraint."""
    if self.mode == "pmap":
      shape = x.shape
      x = x.reshape(shape[:batch_axis] + (self.num_devices, -1) + shape[batch_axis + 1:])
    return jax.lax.with_sharding_constraint(x, self._batch_sharding(batch_axis))

  def to_host(self, tree):
    """Replicated (or fully addressable) global arrays -> numpy, on every process."""
    def get(x):
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_fully_replicated:
          return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(x, tiled=True)
      return np.asarray(x)
    return jax.tree.map(get, tree)

  # --- compilation ------------------------------------------------------------------------

  def _dispatch(self, fn):
    if not self.synchronous:
      return fn
    return lambda *args: jax.block_until_ready(fn(*args))

  def compile_train(self, step_fn: Callable[..., Any], batch_axis: int = 1,
                    num_extra: int = 0):
    """step_fn(state, batch, *extra, axis_name) -> outputs; the state is donated, the `extra`
    arguments and all outputs are replicated (e.g. (state, metrics))."""
    extra = (None,) * num_extra
    if self.mode == "pmap":
      step = jax.pmap(functools.partial(step_fn, axis_name=AXIS), axis_name=AXIS,
                      in_axes=(None, batch_axis) + extra, out_axes=None, donate_argnums=0,
                      devices=self.devices)

      def global_step(*args):
        return jax.tree.map(self._global_replica, step(*args))
      return self._dispatch(global_step)
    return self._dispatch(jax.jit(  # outputs (state, sums) stay split by member
        functools.partial(step_fn, axis_name=None), in_shardings=(
            self.state_sharding, self._batch_sharding(batch_axis)) + (None,) * num_extra,
        out_shardings=self.state_sharding, donate_argnums=0))

  def _batch_sharding(self, batch_axis: int) -> NamedSharding:
    return NamedSharding(self.mesh, self._batch_spec(batch_axis))

  def compile_eval(self, eval_fn: Callable[..., Any], batch_axis: int = 0):
    """eval_fn(params, batch, *, axis_name) -> summed metrics."""
    if self.mode == "pmap":
      return self._dispatch(jax.pmap(functools.partial(eval_fn, axis_name=AXIS),
                                     axis_name=AXIS, in_axes=(None, batch_axis), out_axes=None,
                                     devices=self.devices))
    return self._dispatch(jax.jit(functools.partial(eval_fn, axis_name=None),
                                  in_shardings=(self.state_sharding,
                                                self._batch_sharding(batch_axis)),
                                  out_shardings=self.state_sharding))
