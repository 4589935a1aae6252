"""The compiled steps: one exact step against stored numbers, optimizers, schedules, eval."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from conftest import ROOT, synthetic_arrays, tiny_config
from fmnist_jax import evaluate, input_pipeline, models, population, state as state_lib, steps
from fmnist_jax.parallel import Parallelism


def _state(config):
  return models.create_model(config), state_lib.initial_state(config, 10, 100)


def _batch(count, seed):
  images, labels = synthetic_arrays(count, seed)
  return {"image": jnp.asarray(images), "label": jnp.asarray(labels)}


# One exact training step of the seed CNN (Adam 1e-3, dropout on), on CPU: stored numbers.
EXACT_STEP = {
    "loss": 2.314272880554199,
    "correct": 2,
    "param_abs_sum": 8127.73095703125,
    "conv1_kernel_00": [-0.020227378234267235, -0.11466475576162338, 0.03430233895778656,
                        -0.06259980797767639],
    "logits_bias": [0.0009999924805015326, -0.0009999932954087853, 0.0009999930625781417,
                    -0.0009999932954087853],
}


def exact_step_numbers(options=steps.StepOptions(), extra=None):
  """The stored numbers' step, with `options` and `extra` batch arrays (a distillation's)."""
  config = default.get_config()
  config.model.conv_impl = "xla"  # the stored numbers are lax.conv's (im2col agrees to ~1e-6)
  _, state = _state(config)
  step = jax.jit(functools.partial(steps.train_step, options=options))
  new_state, metrics = step(state, {**_batch(8, seed=5), **(extra or {})})
  params = new_state.params
  return {
      "loss": float(metrics["loss"]) / 8,
      "correct": int(metrics["correct"]),
      "param_abs_sum": float(sum(jnp.abs(p).sum() for p in jax.tree.leaves(params))),
      "conv1_kernel_00": np.asarray(params["conv1"]["kernel"][0, 0, 0, :4]).tolist(),
      "logits_bias": np.asarray(params["logits"]["bias"][:4]).tolist(),
  }


def _optimized_step_numbers():
  """The numbers with XLA's optimisations on, as a user's run compiles (the suite turns most of
  them off: tests/conftest.py), from a process of their own."""
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "0"}
  code = "import json, test_train; print(json.dumps(test_train.exact_step_numbers()))"
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("xla", ["as the suite compiles",
                                 pytest.param("optimized", marks=pytest.mark.slow)])
def test_one_exact_training_step_matches_stored_numbers(xla):
  got = exact_step_numbers() if xla == "as the suite compiles" else _optimized_step_numbers()
  assert got["correct"] == EXACT_STEP["correct"]
  np.testing.assert_allclose(got["loss"], EXACT_STEP["loss"], rtol=1e-5)
  np.testing.assert_allclose(got["param_abs_sum"], EXACT_STEP["param_abs_sum"], rtol=1e-5)
  np.testing.assert_allclose(got["conv1_kernel_00"], EXACT_STEP["conv1_kernel_00"],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got["logits_bias"], EXACT_STEP["logits_bias"], rtol=1e-5,
                             atol=1e-7)


def test_a_few_steps_overfit_a_tiny_batch():
  config = tiny_config(model=dict(dropout_rates=(0.0, 0.0, 0.0)),
                       optimizer=dict(learning_rate=1e-2))
  _, state = _state(config)
  batch = _batch(16, seed=7)
  step = jax.jit(steps.train_step)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]) / 16)
  assert losses[-1] < 0.25 * losses[0], losses
  assert int(state.step) == 40


def test_train_steps_scan_equals_single_steps():
  config = tiny_config()
  _, state = _state(config)
  batches = jax.tree.map(lambda x: x.reshape((3, 16) + x.shape[1:]), _batch(48, seed=9))
  fused, fused_metrics = jax.jit(steps.train_steps)(state, batches)
  single = state
  total = 0.0
  for i in range(3):
    single, metrics = jax.jit(steps.train_step)(single, jax.tree.map(lambda x: x[i], batches))
    total += float(metrics["loss"])
  assert int(fused.step) == int(single.step) == 3
  for a, b in zip(jax.tree.leaves(fused.params), jax.tree.leaves(single.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(fused_metrics["loss"]), total, rtol=1e-5)


def test_dropout_key_is_fold_in_of_the_step():
  """Same state -> same update; the mask changes with the step number."""
  config = tiny_config()
  _, state = _state(config)
  batch = _batch(16, seed=1)
  step = jax.jit(steps.train_step)
  a, _ = step(state, batch)
  b, _ = step(state, batch)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  c, _ = step(state.replace(step=state.step + 1), batch)
  assert not all(np.array_equal(x, y) for x, y in
                 zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


@pytest.mark.parametrize("count,batch_size", [(37, 16), (75, 32), (5, 1000)])
def test_eval_counts_every_example_exactly_once(count, batch_size):
  config = tiny_config()
  model, state = _state(config)
  images, labels = synthetic_arrays(count, seed=4)
  par = Parallelism("jit")
  batches = input_pipeline.eval_batches(images, labels, par, batch_size)
  # (the training loop's program: a population's evaluation, here of one member)
  eval_fn = par.compile_eval(functools.partial(population.eval_step, apply_fn=model.apply))
  stacked = jax.tree.map(lambda x: x[None], state.params)
  dispatched = evaluate.dispatch(eval_fn, par.place_state(stacked), {"test": batches})
  result = evaluate.summarize(par.to_host(dispatched))["test"]
  assert result["count"] == count
  logits = model.apply({"params": state.params}, models.normalize(images), train=False)
  expected_loss = float(steps.cross_entropy(logits, labels).mean())
  expected_accuracy = float(np.mean(np.argmax(logits, -1) == labels))
  np.testing.assert_allclose(result["loss"], expected_loss, rtol=1e-5)
  assert result["accuracy"] == pytest.approx(expected_accuracy)


@pytest.mark.parametrize("optimizer,schedule", [("adam", "constant"), ("adamw", "cosine"),
                                                ("sgd", "warmup_cosine")])
def test_every_optimizer_and_schedule_steps_as_defined(optimizer, schedule):
  """Each optimizer's defining update on a fixed gradient: Adam's first step is lr * sign(g);
  AdamW adds the decoupled decay lr * wd * w; SGD's Nesterov momentum (0.9) gives
  lr(1) * (1 + m + m^2) * (g + wd * w) at the second step of the same gradient (its weight
  decay is L2, added to the gradient; lr(0) = 0 in warm-up)."""
  config = tiny_config(optimizer=dict(name=optimizer, schedule=schedule, warmup_epochs=1.0,
                                      weight_decay=0.05, learning_rate=0.1, momentum=0.9))
  learning_rate = state_lib.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=100)
  tx = state_lib.create_optimizer(config, learning_rate)
  params, grads = jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, 0.5, -0.25])
  opt_state = tx.init(params)
  updates = []
  for _ in range(2):
    update, opt_state = tx.update(grads, opt_state, params)
    updates.append(np.asarray(update))
  lr0, lr1, m = float(learning_rate(0)), float(learning_rate(1)), 0.9
  expected = {"adam": -lr0 * np.sign(grads),
              "adamw": -lr0 * (np.sign(grads) + 0.05 * np.asarray(params)),
              "sgd": -lr1 * (1 + m + m * m) * (grads + 0.05 * np.asarray(params))}[optimizer]
  np.testing.assert_allclose(updates[1 if optimizer == "sgd" else 0], expected, rtol=1e-5)
  if optimizer == "sgd":
    assert lr0 == 0.0 and not np.any(updates[0])  # the warm-up starts from 0
  _, state = _state(config)  # and the whole train step runs with it
  new_state, metrics = jax.jit(steps.train_step)(state, _batch(16, seed=2))
  assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1


def test_learning_rate_schedules_at_chosen_steps():
  config = tiny_config(optimizer=dict(learning_rate=0.1, schedule="warmup_cosine",
                                      warmup_epochs=1.0))
  fn = state_lib.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=110)
  assert float(fn(0)) == 0.0
  assert float(fn(5)) == pytest.approx(0.05)
  assert float(fn(10)) == pytest.approx(0.1)
  assert float(fn(60)) == pytest.approx(0.05, rel=1e-4)
  assert float(fn(110)) == pytest.approx(0.0, abs=1e-7)
  config.optimizer.schedule = "cosine"
  fn = state_lib.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=100)
  assert float(fn(0)) == pytest.approx(0.1) and float(fn(50)) == pytest.approx(0.05)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
  a = input_pipeline.epoch_order(0, 3, 100, 6, 16)
  np.testing.assert_array_equal(a, input_pipeline.epoch_order(0, 3, 100, 6, 16))
  assert not np.array_equal(a, input_pipeline.epoch_order(0, 4, 100, 6, 16))
  assert not np.array_equal(a, input_pipeline.epoch_order(1, 3, 100, 6, 16))
  assert a.shape == (6, 16) and len(np.unique(a)) == 96
