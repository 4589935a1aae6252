"""The training-recipe pieces: augmentation, schedules, label smoothing, EMA, micro-batches,
and stopping at a target accuracy."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import synthetic_arrays, tiny_config
from fmnist_jax import augment, evaluate, models, state as state_lib, steps, train


def _images(count=16, seed=0):
  """Garment-like images: content only in the centre, a zero border of 4 pixels."""
  images = np.zeros((count, 28, 28, 1), np.uint8)
  images[:, 4:24, 4:24] = np.random.default_rng(seed).integers(1, 256, (count, 20, 20, 1))
  return jnp.asarray(images)


def test_augmentations_keep_shape_dtype_and_content():
  images, key = _images(), jax.random.PRNGKey(0)
  out = augment.augment(key, images, translate=2, flip=True, erase_size=6, erase_prob=0.5)
  assert out.shape == images.shape and out.dtype == images.dtype
  assert not np.array_equal(out, images)
  # A shift within the zero border moves the content without losing any of it.
  shifted = augment.random_translate(key, images, pad=2)
  np.testing.assert_array_equal(np.asarray(shifted).sum((1, 2, 3)),
                                np.asarray(images).sum((1, 2, 3)))
  # Each shifted image is the original moved by the drawn offset (dy, dx) - pad.
  offsets = np.asarray(jax.random.randint(key, (16, 2), 0, 5)) - 2
  for image, moved, (dy, dx) in zip(np.asarray(images), np.asarray(shifted), offsets):
    np.testing.assert_array_equal(moved, np.roll(image, (-dy, -dx), axis=(0, 1)))
  # Flips: every image is either itself or its mirror, and both occur.
  flipped = np.asarray(augment.random_flip(key, images))
  same = [np.array_equal(f, i) for f, i in zip(flipped, np.asarray(images))]
  mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, np.asarray(images))]
  assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)
  # Erasing only ever sets pixels to zero.
  erased = np.asarray(augment.random_erase(key, images, size=6, prob=1.0))
  changed = erased != np.asarray(images)
  assert changed.any() and np.all(erased[changed] == 0)


def test_no_augmentation_is_the_identity_and_eval_never_augments():
  images = _images()
  np.testing.assert_array_equal(augment.augment(jax.random.PRNGKey(1), images), images)
  assert not steps.StepOptions().augments
  config = tiny_config(augment=dict(translate=2, flip="random"))
  assert steps.StepOptions.from_config(config).augments
  # eval_step takes no options: the same parameters give the same metrics whatever the recipe.
  model = models.create_model(config)
  state = state_lib.initial_state(config)
  images, labels = synthetic_arrays(32)
  batch = {"image": images, "label": labels, "mask": np.ones(32, np.float32)}
  a = steps.eval_step(state.params, batch, apply_fn=model.apply)
  b = steps.eval_step(state.params, batch, apply_fn=model.apply)
  assert float(a["loss"]) == float(b["loss"])


def test_flip_average_is_mirror_invariant_and_averages_log_probabilities():
  config = tiny_config()
  model = models.create_model(config)
  params = state_lib.initial_state(config).params
  images = jnp.asarray(np.random.default_rng(0).normal(size=(8, 28, 28, 1)), jnp.float32)
  mirrored = images[:, :, ::-1, :]
  plain = models.inference_logits(model.apply, params, images)
  np.testing.assert_allclose(plain, model.apply({"params": params}, images, train=False))
  averaged = models.inference_logits(model.apply, params, images, flip_average=True)
  expected = (jax.nn.log_softmax(plain) + jax.nn.log_softmax(
      model.apply({"params": params}, mirrored, train=False))) / 2
  np.testing.assert_allclose(averaged, expected, rtol=1e-6)
  # An image and its mirror get the same prediction; without averaging they do not.
  np.testing.assert_allclose(
      models.inference_logits(model.apply, params, mirrored, flip_average=True), averaged,
      rtol=1e-5, atol=1e-6)
  assert not np.allclose(models.inference_logits(model.apply, params, mirrored), plain)
  # eval_step and the report's predict use the same averaged logits.
  uint8_images, labels = synthetic_arrays(32)
  batch = {"image": uint8_images, "label": labels, "mask": np.ones(32, np.float32)}
  metrics = steps.eval_step(params, batch, apply_fn=model.apply, flip_average=True)
  stacked = jax.tree.map(lambda x: x[None], params)  # (a population of one)
  probabilities = evaluate.predict(model, stacked, uint8_images, flip_average=True)[0]
  assert int(metrics["correct"]) == int(np.sum(probabilities.argmax(-1) == labels))
  assert int(metrics["count"]) == 32


def test_warmup_cosine_schedule_values():
  config = tiny_config(optimizer=dict(schedule="warmup_cosine", warmup_epochs=2.0,
                                      learning_rate=2e-3))
  lr = state_lib.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=120)
  assert float(lr(0)) == 0.0
  assert float(lr(10)) == pytest.approx(1e-3)          # halfway through the warm-up
  assert float(lr(20)) == pytest.approx(2e-3)          # the peak
  assert float(lr(70)) == pytest.approx(1e-3, rel=1e-5)  # the cosine's midpoint
  assert float(lr(120)) == pytest.approx(0.0, abs=1e-9)
  cosine = state_lib.create_learning_rate_fn(
      tiny_config(optimizer=dict(schedule="cosine")), 10, 100)
  assert float(cosine(50)) == pytest.approx(5e-4)


def test_label_smoothing_loss_matches_the_formula():
  logits = jnp.array([[2.0, 0.5, -1.0]])
  labels = jnp.array([0])
  log_p = np.asarray(jax.nn.log_softmax(logits))[0]
  expected = -(0.9 + 0.1 / 3) * log_p[0] - (0.1 / 3) * (log_p[1] + log_p[2])
  assert float(steps.cross_entropy(logits, labels, 0.1)[0]) == pytest.approx(expected, rel=1e-6)
  assert float(steps.cross_entropy(logits, labels)[0]) == pytest.approx(-log_p[0], rel=1e-6)


def _state_and_batch(ema_decay=0.0, dropout=(0.0, 0.0, 0.0)):
  config = tiny_config(optimizer=dict(ema_decay=ema_decay), model=dict(dropout_rates=dropout))
  model = models.create_model(config, conv_impl="xla")
  state = state_lib.create_train_state(config, model, optax.adam(1e-2))
  images, labels = synthetic_arrays(32, seed=4)
  return state, {"image": jnp.asarray(images), "label": jnp.asarray(labels)}


def test_microbatches_give_the_same_update_as_the_whole_batch():
  state, batch = _state_and_batch()
  whole, m1 = jax.jit(steps.train_step)(state, batch)
  step4 = jax.jit(lambda s, b: steps.train_step(s, b, options=steps.StepOptions(microbatches=4)))
  chunked, m4 = step4(state, batch)
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(chunked.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)
  assert int(m4["correct"]) == int(m1["correct"]) and int(m4["count"]) == 32


def test_ema_follows_the_parameters_with_a_warmed_up_decay():
  state, batch = _state_and_batch(ema_decay=0.99)
  options = steps.StepOptions(ema_decay=0.99)
  step = jax.jit(lambda s, b: steps.train_step(s, b, options=options))
  new, _ = step(state, batch)
  # First step: decay = min(0.99, 1/10) = 0.1, so ema = 0.1 * init + 0.9 * new params.
  for e, p0, p1 in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(state.params),
                       jax.tree.leaves(new.params)):
    np.testing.assert_allclose(e, 0.1 * p0 + 0.9 * p1, rtol=1e-5, atol=1e-7)
  assert new.eval_params is new.ema_params
  plain, _ = _state_and_batch()
  assert plain.ema_params is None and plain.eval_params is plain.params


def test_stop_at_accuracy_stops_at_the_first_evaluation_reaching_it(small_splits, tmp_path):
  config = tiny_config(run=dict(num_epochs=5),
                       eval=dict(stop_at_accuracy=0.01, stop_metric="val_accuracy"))
  train.train_and_evaluate(config, str(tmp_path))
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [12]  # one epoch of 12 steps, then the target is met
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["stop_reason"] == "target_reached" and result["step"] == 12
  assert result["best_by_val"]["step"] == 12 and result["compile_seconds"] > 0


def test_a_stop_after_the_next_epochs_first_calls_keeps_the_epochs_state(small_splits,
                                                                        tmp_path):
  """The loop fetches an epoch's evaluation only after queueing the next epoch's first calls:
  a run that stops at epoch 1 must still end with exactly the state of step 12 (the copy),
  bit-identical to step 12 of a run that does not stop."""
  from fmnist_jax import checkpointing
  from conftest import replicated_state
  config = tiny_config(run=dict(num_epochs=3), parallelism=dict(steps_per_call=4),
                       checkpoints=dict(every_steps=0, keep=5))
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  stopping = tiny_config(run=dict(num_epochs=3), parallelism=dict(steps_per_call=4),
                         checkpoints=dict(every_steps=0, keep=5),
                         eval=dict(stop_at_accuracy=0.01, stop_metric="val_accuracy"))
  train.train_and_evaluate(stopping, str(tmp_path / "stopped"))
  states = []
  for run in ("straight", "stopped"):
    ckpt = checkpointing.Checkpointer(tmp_path / run / "checkpoints", config, read_only=True)
    if run == "stopped":
      assert checkpointing.complete_steps(ckpt.directory) == [12]
    states.append(ckpt.restore(12, replicated_state(config))[0])
    ckpt.close()
  # (the same state, but the stopped run's status: it reached its target at step 12)
  assert [int(s.hparams["status"]) for s in states] == [steps.TRAINING, steps.REACHED]
  for a, b in zip(*(jax.tree.leaves(s.replace(hparams=None)) for s in states)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  result = json.loads((tmp_path / "stopped" / "result.json").read_text())
  assert result["step"] == 12 and result["stop_reason"] == "target_reached"


def test_a_run_without_a_target_completes_and_records_its_best(small_splits, tmp_path):
  config = tiny_config(run=dict(num_epochs=2), optimizer=dict(ema_decay=0.9, label_smoothing=0.1),
                       augment=dict(translate=1, flip="random"))
  train.train_and_evaluate(config, str(tmp_path))
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["stop_reason"] == "completed" and result["step"] == 24
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert result["best_by_val"]["val_accuracy"] == max(r["val_accuracy"] for r in rows)
