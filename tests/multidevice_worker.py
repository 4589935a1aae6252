"""Run in a subprocess with simulated devices (XLA_FLAGS=--xla_force_host_platform_device_count=8).

Computes, inside one process, the same training and evaluation on 1 device and on all devices,
under jit and pmap, and prints the numbers as JSON for tests/test_parallel.py to compare.
"""

import functools
import json
import sys

import jax
import numpy as np

from conftest import synthetic_arrays, tiny_config
from fmnist_jax import evaluate, input_pipeline, models, population, state as state_lib, steps
from fmnist_jax.parallel import Parallelism


def train_params(mode, devices, dropout, num_steps=6, steps_per_call=2):
  """With `dropout`, also on-device augmentation: both random, both drawn for the global batch.
  Two micro-batches per step: each chunk spans all devices."""
  config = tiny_config(run=dict(batch_size=32),
                       model=dict(dropout_rates=(0.3, 0.3, 0.3) if dropout else (0, 0, 0)))
  options = steps.StepOptions(microbatches=2, translate=2 if dropout else 0, flip=dropout)
  par = Parallelism(mode, devices)
  found = population.members(config)  # (one member: the training loop's program for it)
  state = par.place_state(population.initial_state(config, found, 6, 6))
  images, labels = synthetic_arrays(200, seed=1)
  data = input_pipeline.DeviceTrainData(images, labels, par, config.run.batch_size,
                                        (config.run.seed,))
  step_fn = par.compile_train(functools.partial(population.train_call, options=options),
                              batch_axis=2, num_extra=2)
  losses = []
  for batches, num in data.batches(epoch=0, first_step=0, steps_per_call=steps_per_call):
    state, metrics = step_fn(state, batches, par.place_state(steps.zero_metrics(1)),
                             np.int32(num))
    losses.append(float(par.to_host(metrics)["loss"][0]))
    if int(par.to_host(state.step)[0]) >= num_steps:
      break
  return [np.asarray(x).tolist() for x in jax.tree.leaves(par.to_host(state.params))], losses


def eval_metrics(mode, devices, count=75, batch_size=16):
  config = tiny_config()
  par = Parallelism(mode, devices)
  model = models.create_model(config)
  state = state_lib.initial_state(config)
  images, labels = synthetic_arrays(count, seed=4)
  batches = input_pipeline.eval_batches(images, labels, par, batch_size)
  eval_fn = par.compile_eval(functools.partial(population.eval_step, apply_fn=model.apply))
  stacked = jax.tree.map(lambda x: x[None], state.params)  # (a population of one)
  dispatched = evaluate.dispatch(eval_fn, par.place_state(stacked), {"x": batches})
  return evaluate.summarize(par.to_host(dispatched))["x"]


def main():
  devices = jax.devices()
  out = {"device_count": len(devices)}
  out["jit1_dropout"] = train_params("jit", devices[:1], dropout=True)
  out["jit8_dropout"] = train_params("jit", devices, dropout=True)
  out["jit8"] = train_params("jit", devices, dropout=False)
  out["pmap8"] = train_params("pmap", devices, dropout=False)
  out["pmap8_dropout"] = train_params("pmap", devices, dropout=True)
  for mode in ("jit", "pmap"):
    out[f"eval_{mode}1"] = eval_metrics(mode, devices[:1])
    out[f"eval_{mode}8"] = eval_metrics(mode, devices)
  try:
    Parallelism("jit", devices).check_batch_size(100)
  except ValueError as e:
    out["indivisible_error"] = str(e)
  json.dump(out, sys.stdout)


if __name__ == "__main__":
  main()
