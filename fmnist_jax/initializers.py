"""The recipe's initialisations (config.model.conv1_init, config.model.dirac_init): the same
parameters and shapes as the model's own draw, other starting values.

- "whiten" (conv1_init): conv1's first 2 x 9 filters are the whitening transform of the
  training images' 3x3 patches (airbench's initialisation, Jordan 2024): each eigenvector v of
  the patches' covariance scaled by 1/sqrt(eigenvalue + eps), and its negation (conv1 is
  followed by a ReLU, so both signs of each component pass). Each filter's bias centres it
  (its response to the mean patch is 0), so on the training images each of these channels has
  mean 0 and variance ~1 before the ReLU. The other filters keep their Glorot draw. Computed
  from the training split only (never val or test), on the host, once per run.
- dirac_init: conv2 and conv3 start as identities on their inputs: filter i < C_in passes
  input channel i through its centre tap; the filters beyond C_in keep their draw.

`recipe(config, train_images)` returns the function that state.init_state applies to each
freshly drawn parameter tree (None when the config asks for neither), so every seed and every
member of a population gets the same data-dependent part.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

CONV1_INITS = ("glorot", "whiten")
WHITEN_FILTERS = 2 * 9  # a 3x3 patch's 9 components, each with its negation
WHITEN_EPS = 5e-4       # added to the eigenvalues: bounds the gain of near-empty components
WHITEN_IMAGES = 10_000  # the first N training images; the covariance is settled well before


def patch_statistics(images: np.ndarray, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """Mean (9,) and covariance (9, 9) of every 3x3 patch (VALID) of uint8 images (N, 28, 28, 1)
  scaled to [0, 1] as the model sees them, in float64."""
  total, outer, count = np.zeros(9), np.zeros((9, 9)), 0
  for start in range(0, len(images), chunk):
    x = images[start:start + chunk, :, :, 0].astype(np.float64) / 255.0
    height, width = x.shape[1] - 2, x.shape[2] - 2
    patches = np.stack([x[:, i:i + height, j:j + width] for i in range(3) for j in range(3)],
                       axis=-1).reshape(-1, 9)
    total += patches.sum(0)
    outer += patches.T @ patches
    count += len(patches)
  mean = total / count
  return mean, outer / count - np.outer(mean, mean)


def whitening(images: np.ndarray, eps: float = WHITEN_EPS) -> tuple[np.ndarray, np.ndarray]:
  """(kernel (3, 3, 1, 18), bias (18,)): the whitening filters and their negations."""
  mean, covariance = patch_statistics(images)
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)
  filters = eigenvectors.T / np.sqrt(np.maximum(eigenvalues, 0) + eps)[:, None]  # (9, 9)
  filters = np.concatenate([filters, -filters])                                  # (18, 9)
  kernel = filters.T.reshape(3, 3, 1, len(filters)).astype(np.float32)
  return kernel, (-filters @ mean).astype(np.float32)


def dirac(kernel):
  """kernel (3, 3, C_in, F) with its first min(C_in, F) filters replaced by identities."""
  channels = min(kernel.shape[2], kernel.shape[3])
  identity = jnp.zeros((3, 3, kernel.shape[2], channels)).at[1, 1].set(jnp.eye(
      kernel.shape[2], channels))
  return kernel.at[..., :channels].set(identity)


def recipe(config, train_images: np.ndarray | None):
  """params -> params with the config's initialisation, or None (the model's own draw)."""
  whiten = config.model.conv1_init == "whiten"
  if not whiten and not config.model.dirac_init:
    return None
  if whiten:
    kernel, bias = whitening(train_images[:WHITEN_IMAGES])
    count = WHITEN_FILTERS  # (configuration checks that conv1 has as many filters)

  def adjust(params):
    params = dict(params)
    if whiten:
      conv1 = params["conv1"]
      params["conv1"] = {"kernel": conv1["kernel"].at[..., :count].set(kernel),
                         "bias": conv1["bias"].at[:count].set(bias)}
    if config.model.dirac_init:
      for name in ("conv2", "conv3"):
        params[name] = {**params[name], "kernel": dirac(params[name]["kernel"])}
    return params
  return adjust
