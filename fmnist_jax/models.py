"""The seed CNN (Keras tutorial architecture), as a Flax Linen module.

    Conv(32,3x3,VALID,relu) -> MaxPool 2 -> Dropout .25 -> Conv(64,3x3,VALID,relu) -> MaxPool 2
    -> Dropout .4 -> Conv(128,3x3,VALID,relu) -> Flatten -> Dense(128,relu) -> Dropout .3
    -> Dense(10)

241,546 parameters at the defaults. Widths, dropout rates and the compute dtype come from the
config; parameters are always float32 and logits are returned in float32. Kernels start as
Keras' do (glorot_uniform, zero biases), since the seed is a Keras model.
"""

from __future__ import annotations

from typing import Sequence

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# Keras' default initialisers: glorot_uniform kernels, zero biases.
Conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding="VALID",
                         kernel_init=nn.initializers.glorot_uniform())
Dense = functools.partial(nn.Dense, kernel_init=nn.initializers.glorot_uniform())

CONV_IMPLS = ("auto", "xla", "im2col")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def normalize(images):
  """uint8 [0, 255] -> float32 [0, 1], on device: the model's input scaling."""
  return images.astype(jnp.float32) / 255.0


def resolve_conv_impl(conv_impl: str) -> str:
  """"auto": the form measured fastest for training on this platform (benchmarks/results/):
  im2col on CPU; lax.conv on GPU/TPU, where XLA's convolutions are fast."""
  if conv_impl != "auto":
    return conv_impl
  return "im2col" if jax.default_backend() == "cpu" else "xla"


# --- the matmul form of a 3x3 VALID convolution (CPU fast path) ------------------------------
#
# XLA's CPU convolution *weight gradient* runs far below a matmul of the same size
# (docs/performance.md): the same convolution as a patch matrix times the kernel, with a
# hand-written backward that reuses the patches, trains faster there.

def _matmul(a, b, dtype):
  """a @ b with the operands in `dtype`, accumulated and returned in float32. bfloat16 operands
  run on the matrix units of CPUs with AMX/AVX512-BF16 (and of GPUs/TPUs); a bfloat16 *result*
  takes a slow path on CPU (benchmarks/matmul_dtypes.py)."""
  return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _patches(x):
  """(B, H, W, C) -> (B, H-2, W-2, 9C): the 9 shifted views, in the kernel's (i, j, c) order."""
  height, width = x.shape[1] - 2, x.shape[2] - 2
  return jnp.concatenate([x[:, i:i + height, j:j + width, :]
                          for i in range(3) for j in range(3)], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_im2col(x, kernel, dtype=jnp.float32):
  """VALID 3x3 convolution, no bias: x (B,H,W,C), kernel (3,3,C,F) -> (B,H-2,W-2,F), float32.
  x and kernel are float32; `dtype` is the matmuls' operand dtype."""
  return _conv_forward(x, kernel, dtype)[0]


def _conv_forward(x, kernel, dtype):
  patches = _patches(x.astype(dtype))
  return _matmul(patches, kernel.reshape(-1, kernel.shape[-1]), dtype), (patches, kernel)


def _conv_backward(dtype, residuals, dy):
  patches, kernel = residuals
  channels, features = kernel.shape[2], kernel.shape[3]
  # Weight gradient: one matmul over every output position.
  dkernel = _matmul(patches.reshape(-1, patches.shape[-1]).T, dy.reshape(-1, features),
                    dtype).reshape(kernel.shape)
  # Input gradient: one matmul, then each of the 9 channel blocks shifted back into place.
  dpatches = _matmul(dy, kernel.reshape(-1, features).T, dtype)
  dx = sum(jnp.pad(dpatches[..., (3 * i + j) * channels:(3 * i + j + 1) * channels],
                   ((0, 0), (i, 2 - i), (j, 2 - j), (0, 0)))
           for i in range(3) for j in range(3))
  return dx, dkernel


conv3x3_im2col.defvjp(_conv_forward, _conv_backward)


@jax.custom_vjp
def max_pool_2x2(x):
  """2x2/2 max-pool (floor mode: an odd last row/column is dropped). Its gradient is jnp.max's,
  shared equally between tied maxima (ReLU'd zero backgrounds tie often), computed
  elementwise on the four strided views instead of as 6-d reductions."""
  return _pool_forward(x)[0]


def _pool_views(x):
  height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  return [x[:, i:height:2, j:width:2, :] for i in range(2) for j in range(2)]


def _pool_forward(x):
  a, b, c, d = _pool_views(x)
  y = jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))
  return y, (x, y)


def _pool_backward(residuals, dy):
  x, y = residuals
  hits = [view == y for view in _pool_views(x)]
  share = dy / sum(hit.astype(dy.dtype) for hit in hits)
  a, b, c, d = [jnp.where(hit, share, 0.0) for hit in hits]
  batch, height, width, channels = y.shape
  dx = jnp.stack([jnp.stack([a, b], 3), jnp.stack([c, d], 3)], 2)  # (B, H, 2, W, 2, C)
  dx = dx.reshape(batch, 2 * height, 2 * width, channels)
  return (jnp.pad(dx, ((0, 0), (0, x.shape[1] - 2 * height), (0, x.shape[2] - 2 * width),
                       (0, 0))),)


max_pool_2x2.defvjp(_pool_forward, _pool_backward)


class Im2colConv(nn.Module):
  """Same parameters as `Conv` (kernel (3,3,Cin,F), bias (F,)); bias added by the caller, so
  that a following max-pool can run first (max commutes with adding a per-channel constant).
  Input and output float32; `dtype` is the matmul operands' dtype."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.glorot_uniform(),
                        (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return conv3x3_im2col(x, kernel, self.dtype), bias


class Dropout(nn.Module):
  """nn.Dropout whose rate may also be a traced value (each member of a population has its
  own): the same key (same name, hence the same `make_rng` path), mask and scaling as
  nn.Dropout. A traced rate of 0 keeps everything, as nn.Dropout(0) does."""

  @nn.compact
  def __call__(self, x, rate, *, train: bool):
    if not train or (isinstance(rate, (int, float)) and rate == 0):
      return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


def _dot_general_in(dtype):
  """A dot_general for nn.Dense: operands in `dtype`, float32 accumulation and result."""
  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    del preferred_element_type
    return jax.lax.dot_general(lhs.astype(dtype), rhs.astype(dtype), dimension_numbers,
                               precision=precision, preferred_element_type=jnp.float32)
  return dot_general


class CNN(nn.Module):
  """The seed CNN. `train=True` turns dropout on; it then needs a 'dropout' RNG.

  `dtype` is the compute dtype. In the "xla" form everything runs in it (Flax's usual
  mixed precision: float32 parameters cast to `dtype`). In the "im2col" form (the CPU one) only
  the matmul operands are in `dtype`, with float32 accumulation and float32 activations: CPUs
  have no fast elementwise bfloat16, and their bfloat16 matmul units return float32 fast."""
  conv_features: Sequence[int] = (32, 64, 128)
  dense_features: int = 128
  num_classes: int = 10
  dropout_rates: Sequence[float] = (0.25, 0.4, 0.3)
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "xla"  # "xla": lax.conv; "im2col": the matmul form
  # The xla form's 2x2 max-pool: "reshape" (reshape + max: the faster on GPU) or "window"
  # (nn.max_pool's reduce_window: the faster for inference on CPU). The same values.
  pool_impl: str = "reshape"

  def _conv(self, x, features, name, pool):
    """conv -> ReLU (-> 2x2 max-pool). Both forms compute the same function."""
    if self.conv_impl == "im2col":
      y, bias = Im2colConv(features, dtype=self.dtype, name=name)(x)
      if pool:
        y = max_pool_2x2(y)  # before bias and ReLU: 4x less elementwise work, same result
      return nn.relu(y + bias)
    y = nn.relu(Conv(features, dtype=self.dtype, name=name)(x))
    if not pool:
      return y
    return max_pool_2x2(y) if self.pool_impl == "reshape" else nn.max_pool(y, (2, 2), (2, 2))

  @nn.compact
  def __call__(self, x, *, train: bool, dropout_rates=None):
    """`dropout_rates` (three values, possibly traced) replaces the module's own."""
    conv1, conv2, conv3 = self.conv_features
    drop1, drop2, drop3 = self.dropout_rates if dropout_rates is None else dropout_rates
    matmul_form = self.conv_impl == "im2col" and self.dtype != jnp.float32
    activations = jnp.float32 if self.conv_impl == "im2col" else self.dtype
    dense = functools.partial(Dense, dtype=activations,
                              dot_general=_dot_general_in(self.dtype) if matmul_form else None)
    x = x.astype(activations)
    x = self._conv(x, conv1, "conv1", pool=True)
    x = Dropout()(x, drop1, train=train)
    x = self._conv(x, conv2, "conv2", pool=True)
    x = Dropout()(x, drop2, train=train)
    x = self._conv(x, conv3, "conv3", pool=False)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(dense(self.dense_features, name="dense1")(x))
    x = Dropout()(x, drop3, train=train)
    x = dense(self.num_classes, name="logits")(x)
    return x.astype(jnp.float32)


def _shifted(images, dy: int, dx: int):
  """Images moved by (dy, dx) pixels, the uncovered border filled with zeros (the
  background), as training's random shifts do."""
  pad = max(abs(dy), abs(dx))
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  height, width = images.shape[1:3]
  return padded[:, pad - dy:pad - dy + height, pad - dx:pad - dx + width, :]


def inference_logits(apply_fn, params, images, *, flip_average: bool = False,
                     translate: int = 0):
  """Logits for evaluation, or with test-time augmentation the weighted mean of the views'
  log-probabilities (the same parameters, more inference FLOPs). `flip_average`: each image
  and its mirror image (Fashion-MNIST's classes are left-right symmetric, and training with
  random flips shows the model both). `translate` = t > 0: airbench's multi-crop weighting,
  1/2 the image itself and 1/4 each the image moved by (-t, -t) and (+t, +t) pixels, each of
  them flip-averaged when `flip_average` is on: 3x (6x with flips) the FLOPs."""
  def views(images):
    logits = apply_fn({"params": params}, images, train=False)
    if not flip_average:
      return logits
    mirrored = apply_fn({"params": params}, images[:, :, ::-1, :], train=False)
    return (jax.nn.log_softmax(logits) + jax.nn.log_softmax(mirrored)) / 2
  logits = views(images)
  if not translate:
    return logits
  moved = [jax.nn.log_softmax(views(_shifted(images, s, s))) for s in (-translate, translate)]
  return jax.nn.log_softmax(logits) / 2 + (moved[0] + moved[1]) / 4


def tta_options(config) -> dict:
  """The config's test-time augmentation, as inference_logits' keyword arguments."""
  return {"flip_average": bool(config.eval.tta_flip),
          "translate": int(config.eval.tta_translate)}


def create_model(config, conv_impl: str | None = None) -> CNN:
  """The config's CNN; `conv_impl` overrides config.model.conv_impl (e.g. "xla" for evaluation)."""
  return CNN(conv_features=tuple(config.model.conv_features),
             dense_features=config.model.dense_features,
             num_classes=config.model.num_classes,
             dropout_rates=tuple(config.model.dropout_rates),
             dtype=DTYPES[config.model.dtype],
             conv_impl=resolve_conv_impl(conv_impl or config.model.conv_impl),
             pool_impl="window" if jax.default_backend() == "cpu" else "reshape")


def parameter_count(config) -> int:
  """The CNN's parameters, from the layer shapes (241,546 at the defaults)."""
  size, channels, count = 28, 1, 0
  for i, features in enumerate(config.model.conv_features):
    size -= 2
    count += 9 * channels * features + features
    channels = features
    if i < 2:
      size //= 2
  fan_in = size * size * channels
  return count + (fan_in + 1) * config.model.dense_features + \
      (config.model.dense_features + 1) * config.model.num_classes


def activations_per_image(config) -> int:
  """Floats a training step keeps per image, counted from the layer shapes: each layer's input
  patches (the im2col form's, the larger), output and pooled output, and the dense layers'
  outputs. A memory estimate (XLA reuses buffers; the gradients need as much again)."""
  size, channels, floats = 28, 1, 28 * 28
  for i, features in enumerate(config.model.conv_features):
    size -= 2
    floats += size * size * (9 * channels + features)
    channels = features
    if i < 2:
      size //= 2
      floats += size * size * channels
  return floats + config.model.dense_features + config.model.num_classes


def flops_per_image(config, train: bool = True) -> int:
  """Floating-point operations per image, counted from the layer shapes (2 per multiply-add;
  convolutions and dense layers only, the rest is < 1%). Forward: each layer's 2*out*fan_in.
  Training: forward + input gradients + weight gradients = 3x forward, less the first
  layer's input gradient, which nobody needs. XLA's own cost analysis misses cuDNN's
  convolutions on GPU, so % of peak is computed from this count on every platform."""
  size, channels, layers = 28, 1, []
  for i, features in enumerate(config.model.conv_features):
    size -= 2  # 3x3 VALID
    layers.append(size * size * 9 * channels * features)
    channels = features
    if i < 2:
      size //= 2  # 2x2 max-pool after conv1 and conv2
  fan_in = size * size * channels
  layers += [fan_in * config.model.dense_features,
             config.model.dense_features * config.model.num_classes]
  forward = 2 * sum(layers)
  return 3 * forward - 2 * layers[0] if train else forward
