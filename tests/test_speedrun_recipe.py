"""The speedrun recipe's options (configs/default.py; each off by default): the whitening and
identity initialisations, alternating flips, translation test-time augmentation, lookahead,
SGD's weight decay and the warm-up + linear-decay schedule. Numbers, against what each one
is defined to compute."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import synthetic_arrays, tiny_config
from fmnist_jax import (augment, configuration, initializers, input_pipeline, models, population,
                        state as state_lib, steps, train)
from fmnist_jax.errors import ConfigError
from fmnist_jax.parallel import Parallelism


def _patches(images):
  x = images[..., 0].astype(np.float64) / 255.0
  return np.stack([x[:, i:i + 26, j:j + 26] for i in range(3) for j in range(3)],
                  -1).reshape(-1, 9)


def test_whitening_filters_whiten_the_training_patches():
  images, _ = synthetic_arrays(300)
  kernel, bias = initializers.whitening(images)
  assert kernel.shape == (3, 3, 1, 18) and bias.shape == (18,)
  filters = kernel.reshape(9, 18)
  np.testing.assert_allclose(filters[:, 9:], -filters[:, :9])  # each filter and its negation
  responses = _patches(images) @ filters[:, :9] + bias[:9]
  np.testing.assert_allclose(responses.mean(0), 0, atol=1e-4)  # centred by the bias
  covariance = np.cov(responses, rowvar=False, bias=True)
  eigenvalues = np.linalg.eigvalsh(np.cov(_patches(images), rowvar=False, bias=True))
  # Decorrelated, each variance lambda / (lambda + eps): ~1 where the data has variance.
  np.testing.assert_allclose(covariance, np.diag(np.sort(
      eigenvalues / (eigenvalues + initializers.WHITEN_EPS))), atol=2e-3)


def test_recipe_initialisation_keeps_shapes_and_the_other_filters():
  config = tiny_config(model=dict(conv_features=(32, 64, 128), dense_features=128,
                                  conv1_init="whiten", dirac_init=True))
  images, _ = synthetic_arrays(100)
  plain = state_lib.initial_state(tiny_config(model=dict(conv_features=(32, 64, 128),
                                                         dense_features=128)))
  adjusted = state_lib.initial_state(config, adjust=initializers.recipe(config, images))
  assert models.parameter_count(config) == 241_546 == sum(
      x.size for x in jax.tree.leaves(adjusted.params))
  kernel, bias = initializers.whitening(images)
  np.testing.assert_array_equal(adjusted.params["conv1"]["kernel"][..., :18], kernel)
  np.testing.assert_array_equal(adjusted.params["conv1"]["bias"][:18], bias)
  np.testing.assert_array_equal(adjusted.params["conv1"]["kernel"][..., 18:],
                                plain.params["conv1"]["kernel"][..., 18:])
  # conv2/conv3: identities on their inputs (checked through the convolution itself).
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 32)), jnp.float32)
  y = jax.lax.conv_general_dilated(x, adjusted.params["conv2"]["kernel"], (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y[..., :32], x[:, 1:-1, 1:-1, :], atol=1e-6)
  np.testing.assert_array_equal(adjusted.params["conv2"]["kernel"][..., 32:],
                                plain.params["conv2"]["kernel"][..., 32:])
  np.testing.assert_array_equal(adjusted.params["dense1"]["kernel"],
                                plain.params["dense1"]["kernel"])
  assert initializers.recipe(tiny_config(), images) is None  # off by default


def test_alternating_flips_mirror_each_image_every_other_epoch():
  order = input_pipeline.epoch_order(3, 0, 200, 12, 16)
  flips = [input_pipeline.alternate_flips(3, epoch, order, 200) for epoch in range(3)]
  np.testing.assert_array_equal(flips[0], ~flips[1])  # the next epoch: the other way
  np.testing.assert_array_equal(flips[0], flips[2])
  assert 0.3 < flips[0].mean() < 0.7  # random within an epoch
  # The device data delivers each batch's images and their flips from one array.
  images, labels = synthetic_arrays(200)
  par = Parallelism("jit", jax.devices()[:1])
  with_flips = input_pipeline.DeviceTrainData(images, labels, par, 16, (3,), flips=True)
  plain = input_pipeline.DeviceTrainData(images, labels, par, 16, (3,))
  (batch, _), (same, _) = next(with_flips.batches(1, 0, 4)), next(plain.batches(1, 0, 4))
  np.testing.assert_array_equal(batch["image"], same["image"])
  batch = jax.tree.map(lambda x: x[:, 0], batch)  # (the one member's)
  order = input_pipeline.epoch_order(3, 1, 200, 12, 16)[:4]
  np.testing.assert_array_equal(batch["flip"], input_pipeline.alternate_flips(3, 1, order, 200))
  # The step mirrors exactly those images.
  mirrored = augment.augment(jax.random.PRNGKey(0), batch["image"][0], flip=True,
                             flip_mask=batch["flip"][0])
  expected = np.where(np.asarray(batch["flip"][0])[:, None, None, None],
                      np.asarray(batch["image"][0])[:, :, ::-1], batch["image"][0])
  np.testing.assert_array_equal(mirrored, expected)


def test_translation_tta_averages_the_moved_views():
  config = tiny_config()
  model = models.create_model(config)
  params = state_lib.initial_state(config).params
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 28, 28, 1)), jnp.float32)

  def logp(x):
    return jax.nn.log_softmax(models.inference_logits(model.apply, params, x,
                                                      flip_average=True))
  up_left = jnp.pad(images, ((0, 0), (0, 1), (0, 1), (0, 0)))[:, 1:, 1:]   # moved by (-1, -1)
  down_right = jnp.pad(images, ((0, 0), (1, 0), (1, 0), (0, 0)))[:, :-1, :-1]
  expected = logp(images) / 2 + (logp(up_left) + logp(down_right)) / 4
  got = models.inference_logits(model.apply, params, images, flip_average=True, translate=1)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert models.tta_options(tiny_config(eval=dict(tta_translate=1))) == {"flip_average": False,
                                                               "translate": 1}
  # The loop's eval step and the report's predictions agree.
  uint8_images, labels = synthetic_arrays(32)
  batch = {"image": uint8_images, "label": labels, "mask": np.ones(32, np.float32)}
  metrics = steps.eval_step(params, batch, apply_fn=model.apply, translate=1)
  from fmnist_jax import evaluate
  stacked = jax.tree.map(lambda x: x[None], params)  # (a population of one)
  probabilities = evaluate.predict(model, stacked, uint8_images, translate=1)[0]
  assert int(metrics["correct"]) == int(np.sum(probabilities.argmax(-1) == labels))


def _quadratic_path(tx, steps=7):
  target = {"w": jnp.array([1.0, -2.0, 3.0])}
  params = {"w": jnp.zeros(3)}
  opt_state, path = tx.init(params), []
  for _ in range(steps):
    grads = jax.grad(lambda p: jnp.sum((p["w"] - target["w"]) ** 2))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    path.append(params["w"])
  return np.array(path)


def test_lookahead_matches_optax_lookahead():
  ours = _quadratic_path(state_lib.lookahead(optax.sgd(0.1), every=3, alpha=0.5))
  reference = optax.lookahead(optax.sgd(0.1), sync_period=3, slow_step_size=0.5)
  params = optax.LookaheadParams.init_synced({"w": jnp.zeros(3)})
  opt_state, target, theirs = reference.init(params), jnp.array([1.0, -2.0, 3.0]), []
  for _ in range(7):
    grads = jax.grad(lambda p: jnp.sum((p["w"] - target) ** 2))(params.fast)
    updates, opt_state = reference.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    theirs.append(params.fast["w"])
  np.testing.assert_allclose(ours, np.array(theirs), rtol=1e-6)
  assert not np.allclose(ours, _quadratic_path(optax.sgd(0.1)))
  config = tiny_config(optimizer=dict(lookahead_every=4))
  assert isinstance(state_lib.initial_state(config).opt_state, state_lib.LookaheadState)


def test_sgd_weight_decay_and_the_warmup_linear_schedule():
  config = tiny_config(optimizer=dict(name="sgd", momentum=0.0, weight_decay=0.1,
                                      learning_rate=0.5))
  tx = state_lib.create_optimizer(config, 0.5)
  params, grads = {"w": jnp.array([2.0])}, {"w": jnp.array([1.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(updates["w"][0]) == pytest.approx(-0.5 * (1.0 + 0.1 * 2.0))
  linear = tiny_config(optimizer=dict(schedule="warmup_linear", warmup_epochs=1.0,
                                      learning_rate=2e-3))
  lr = state_lib.create_learning_rate_fn(linear, steps_per_epoch=10, total_steps=50)
  assert [float(lr(s)) for s in (0, 5, 10, 30, 50)] == pytest.approx(
      [0.0, 1e-3, 2e-3, 1e-3, 0.0], abs=1e-9)


def test_recipe_options_are_refused_in_one_line_before_any_data():
  for fields, words in (({"model.conv1_init": "pca"}, "conv1_init"),
                        ({"model.conv1_init": "whiten", "model.conv_features": (8, 8, 8)},
                         ">= 18"),
                        ({"augment.flip": "alternate", "data.input_mode": "tfds"},
                         "input_mode='device'"),
                        ({"augment.flip": "sometimes"}, "augment.flip='sometimes'"),
                        ({"eval.tta_translate": 9}, "eval.tta_translate"),
                        ({"optimizer.lookahead_alpha": 0.0}, "lookahead_alpha")):
    with pytest.raises(ConfigError, match=words):
      configuration.validate_config(tiny_config(fields))
  with pytest.raises(ConfigError, match="conv1_init"):  # not a field a population varies
    population.check(tiny_config(population=dict(members=(("model.conv1_init",
                                                           ("glorot", "whiten")),))))


RECIPE = {"model.conv_features": (20, 8, 8), "model.conv1_init": "whiten",
          "model.dirac_init": True, "augment.flip": "alternate", "augment.translate": 1,
          "eval.tta_flip": True, "eval.tta_translate": 1, "optimizer.lookahead_every": 3,
          "optimizer.name": "sgd", "optimizer.learning_rate": 0.02,
          "optimizer.weight_decay": 5e-4, "optimizer.schedule": "warmup_linear",
          "optimizer.warmup_epochs": 0.5, "optimizer.label_smoothing": 0.2}


@pytest.mark.slow
def test_every_option_at_once_trains_and_a_member_equals_its_single_run(small_splits,
                                                                         tmp_path):
  single = train.train_and_evaluate(tiny_config(RECIPE, run=dict(seed=1)),
                                    str(tmp_path / "single"))
  both = train.train_and_evaluate(tiny_config(RECIPE,
                                              population=dict(members=(("run.seed", (0, 1)),))),
                                  str(tmp_path / "population"))
  member = both["members"][1]
  for key in ("val_accuracy", "test_accuracy", "train_loss"):
    assert member[key] == pytest.approx(single[key], rel=1e-5)
  result = json.loads((tmp_path / "single" / "result.json").read_text())
  assert result["stop_reason"] == "completed" and np.isfinite(single["test_loss"])


def _latest_state(workdir, config):
  from conftest import replicated_state
  from fmnist_jax import checkpointing
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", config, read_only=True)
  state, _ = ckpt.restore_latest(replicated_state(config))
  ckpt.close()
  return state


def test_a_resume_mid_lookahead_cycle_and_flip_parity_is_bit_identical(small_splits, tmp_path):
  """Stopped at step 7 (lookahead syncs every 3; 12 steps an epoch, so the flips' parity
  turns after the resume), resumed to 20: the same state as a run straight through."""
  fields = {**RECIPE, "optimizer.schedule": "constant", "checkpoints.every_steps": 5}
  config = tiny_config(fields, run=dict(num_train_steps=20))
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  train.train_and_evaluate(tiny_config(fields, run=dict(num_train_steps=7)),
                           str(tmp_path / "resumed"))
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  a, b = (_latest_state(tmp_path / run, config) for run in ("straight", "resumed"))
  assert int(a.step) == int(b.step) == 20 and int(b.opt_state.count) == 20
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state, a.ema_params)),
                  jax.tree.leaves((b.params, b.opt_state, b.ema_params))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
