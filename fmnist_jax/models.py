"""The seed CNN (Keras tutorial architecture), as a Flax Linen module.

    Conv(32,3x3,VALID,relu) -> MaxPool 2 -> Dropout .25 -> Conv(64,3x3,VALID,relu) -> MaxPool 2
    -> Dropout .4 -> Conv(128,3x3,VALID,relu) -> Flatten -> Dense(128,relu) -> Dropout .3
    -> Dense(10)

241,546 parameters at the defaults. Widths, dropout rates and the compute dtype come from the
config; parameters are always float32 and logits are returned in float32. Kernels start as
Keras' do (glorot_uniform, zero biases), since the seed is a Keras model.
"""

from typing import Sequence

import functools

import flax.linen as nn
import jax.numpy as jnp

# Keras' default initialisers: glorot_uniform kernels, zero biases.
Conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding="VALID",
                         kernel_init=nn.initializers.glorot_uniform())
Dense = functools.partial(nn.Dense, kernel_init=nn.initializers.glorot_uniform())

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class CNN(nn.Module):
  """The seed CNN. `train=True` turns dropout on; it then needs a 'dropout' RNG."""
  conv_features: Sequence[int] = (32, 64, 128)
  dense_features: int = 128
  num_classes: int = 10
  dropout_rates: Sequence[float] = (0.25, 0.4, 0.3)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv1, conv2, conv3 = self.conv_features
    drop1, drop2, drop3 = self.dropout_rates
    x = x.astype(self.dtype)
    x = nn.relu(Conv(conv1, dtype=self.dtype, name="conv1")(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(drop1, deterministic=not train)(x)
    x = nn.relu(Conv(conv2, dtype=self.dtype, name="conv2")(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(drop2, deterministic=not train)(x)
    x = nn.relu(Conv(conv3, dtype=self.dtype, name="conv3")(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(Dense(self.dense_features, dtype=self.dtype, name="dense1")(x))
    x = nn.Dropout(drop3, deterministic=not train)(x)
    x = Dense(self.num_classes, dtype=self.dtype, name="logits")(x)
    return x.astype(jnp.float32)


def create_model(config) -> CNN:
  return CNN(conv_features=tuple(config.conv_features),
             dense_features=config.dense_features,
             num_classes=config.num_classes,
             dropout_rates=tuple(config.dropout_rates),
             dtype=DTYPES[config.dtype])
