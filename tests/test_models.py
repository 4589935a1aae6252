import re

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from fmnist_jax import models


def _init(model, batch=2):
  return model.init(jax.random.PRNGKey(0), jnp.zeros((batch, 28, 28, 1)), train=False)


def test_seed_cnn_has_241546_parameters_and_10_logits():
  model = models.create_model(default.get_config())
  variables = _init(model)
  count = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert count == 241_546
  logits = model.apply(variables, jnp.zeros((5, 28, 28, 1)), train=False)
  assert logits.shape == (5, 10) and logits.dtype == jnp.float32
  shapes = {k: v["kernel"].shape for k, v in variables["params"].items()}
  assert shapes == {"conv1": (3, 3, 1, 32), "conv2": (3, 3, 32, 64), "conv3": (3, 3, 64, 128),
                    "dense1": (1152, 128), "logits": (128, 10)}


def test_dropout_only_in_training_and_driven_by_the_key():
  model = models.CNN()
  variables = _init(model)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
  eval_a = model.apply(variables, x, train=False)
  eval_b = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = lambda seed: model.apply(variables, x, train=True,
                                   rngs={"dropout": jax.random.PRNGKey(seed)})
  np.testing.assert_array_equal(train(3), train(3))
  assert not np.allclose(train(3), train(4))
  assert not np.allclose(train(3), eval_a)


def test_no_dropout_model_is_deterministic_in_training():
  model = models.CNN(dropout_rates=(0.0, 0.0, 0.0))
  variables = _init(model)
  x = jnp.ones((2, 28, 28, 1))
  np.testing.assert_array_equal(model.apply(variables, x, train=True),
                                model.apply(variables, x, train=False))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.CNN(dtype=jnp.bfloat16)
  variables = _init(model)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  logits = model.apply(variables, jnp.ones((2, 28, 28, 1)), train=False)
  assert logits.dtype == jnp.float32
  full = models.CNN().apply(variables, jnp.ones((2, 28, 28, 1)), train=False)
  np.testing.assert_allclose(logits, full, rtol=0.1, atol=0.1)


def test_im2col_form_has_the_same_parameters_function_and_gradients():
  xla = models.CNN(dropout_rates=(0.0, 0.0, 0.0))
  fast = models.CNN(dropout_rates=(0.0, 0.0, 0.0), conv_impl="im2col")
  params = _init(xla)["params"]
  assert jax.tree.structure(_init(fast)["params"]) == jax.tree.structure(params)
  assert jax.tree.map(jnp.shape, _init(fast)["params"]) == jax.tree.map(jnp.shape, params)
  images = jax.random.uniform(jax.random.PRNGKey(2), (16, 28, 28, 1))
  labels = jnp.arange(16) % 10

  def loss(model, p):
    logits = model.apply({"params": p}, images, train=True)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), labels])

  np.testing.assert_allclose(fast.apply({"params": params}, images, train=False),
                             xla.apply({"params": params}, images, train=False),
                             rtol=1e-5, atol=1e-5)
  grads_fast = jax.grad(lambda p: loss(fast, p))(params)
  grads_xla = jax.grad(lambda p: loss(xla, p))(params)
  for a, b in zip(jax.tree.leaves(grads_fast), jax.tree.leaves(grads_xla)):
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


def test_bfloat16_matmul_form_multiplies_in_bfloat16_into_float32():
  """The CPU form's bfloat16 mode: the 5 forward matmuls and the convolutions' 5 backward ones
  take bfloat16 operands and return float32 (the dense layers' backward, autodiff's, stays
  float32); the gradients stay close to the float32 ones."""
  full = models.CNN(dropout_rates=(0.0, 0.0, 0.0), conv_impl="im2col")
  mixed = models.CNN(dropout_rates=(0.0, 0.0, 0.0), conv_impl="im2col", dtype=jnp.bfloat16)
  params = _init(full)["params"]
  images = jax.random.uniform(jax.random.PRNGKey(2), (16, 28, 28, 1))
  labels = jnp.arange(16) % 10

  def loss(model, p):
    logits = model.apply({"params": p}, images, train=True)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), labels])

  grad = jax.jit(jax.grad(lambda p: loss(mixed, p)))
  dots = [line for line in grad.lower(params).as_text().splitlines() if "dot_general" in line]
  mixed_dots = [line for line in dots if re.search(
      r"\(tensor<[^>]*xbf16>, tensor<[^>]*xbf16>\) -> tensor<[^>]*xf32>", line)]
  assert len(dots) == 14 and len(mixed_dots) == 10  # no input gradient for the images
  assert all(line.endswith("xf32>") for line in dots)
  grads, reference = grad(params), jax.grad(lambda p: loss(full, p))(params)
  # bfloat16's 8-bit mantissa: ~10% relative error on the first layers' gradients here, like
  # the all-bfloat16 "xla" form's; the whole gradient points the same way.
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
    assert a.dtype == jnp.float32
    assert float(jnp.linalg.norm(a - b)) < 0.25 * float(jnp.linalg.norm(b))
  a, b = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)]) for g in (grads, reference))
  assert float(a @ b / jnp.linalg.norm(a) / jnp.linalg.norm(b)) > 0.995


def test_reshape_max_pool_floors_odd_sizes_like_nn_max_pool():
  import flax.linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, 11, 3))
  np.testing.assert_array_equal(models.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_max_pool_gradient_is_jnp_max_s_exactly_with_ties_shared():
  """The hand-written pooling gradient equals autodiff of reshape + max bit for bit, ties
  (frequent on ReLU'd zero backgrounds) shared equally, odd sizes floored."""
  def reference(x):
    b, h, w, c = x.shape
    return x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
  rng = np.random.default_rng(0)
  for shape in [(4, 26, 26, 8), (3, 11, 11, 5)]:
    x = jnp.asarray(rng.integers(-2, 3, shape).astype(np.float32))  # many 2-, 3-, 4-way ties
    dy = jnp.asarray(rng.normal(size=reference(x).shape).astype(np.float32))
    np.testing.assert_array_equal(models.max_pool_2x2(x), reference(x))
    np.testing.assert_array_equal(jax.vjp(models.max_pool_2x2, x)[1](dy)[0],
                                  jax.vjp(reference, x)[1](dy)[0])


def test_both_max_pool_forms_give_the_same_values_and_gradients():
  """The xla form pools by reshape + max on GPU/TPU and by reduce_window on CPU."""
  window = models.CNN(dropout_rates=(0.0, 0.0, 0.0), pool_impl="window")
  reshape = models.CNN(dropout_rates=(0.0, 0.0, 0.0), pool_impl="reshape")
  params = _init(window)["params"]
  images = jax.random.uniform(jax.random.PRNGKey(3), (8, 28, 28, 1))
  np.testing.assert_array_equal(window.apply({"params": params}, images, train=False),
                                reshape.apply({"params": params}, images, train=False))

  def loss(model, p):
    return jnp.sum(model.apply({"params": p}, images, train=True) ** 2)
  for a, b in zip(jax.tree.leaves(jax.grad(lambda p: loss(window, p))(params)),
                  jax.tree.leaves(jax.grad(lambda p: loss(reshape, p))(params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_flops_per_image_counted_from_the_layer_shapes():
  """2 FLOPs per multiply-add of each conv and dense layer; training is 3x the forward pass
  less conv1's input gradient. The seed CNN, and every width doubled (configs/wide.py)."""
  config = default.get_config()
  forward = 389_376 + 4_460_544 + 1_327_104 + 294_912 + 2_560
  assert models.flops_per_image(config, train=False) == forward == 6_474_496
  assert models.flops_per_image(config) == 3 * forward - 389_376 == 19_034_112
  config.model.conv_features, config.model.dense_features = (64, 128, 256), 256
  conv1 = 2 * 26 * 26 * 9 * 1 * 64
  wide = conv1 + 2 * 11 * 11 * 9 * 64 * 128 + 2 * 3 * 3 * 9 * 128 * 256 \
      + 2 * 3 * 3 * 256 * 256 + 2 * 256 * 10
  assert models.flops_per_image(config, train=False) == wide == 25_114_112
  assert models.flops_per_image(config) == 3 * wide - conv1
