"""On-device data augmentation for training batches (uint8 images [B, H, W, C]).

Each function is pure: (key, images) -> images of the same shape and dtype, jit- and
scan-friendly, and drawn per image. Under `jit` with partitionable threefry the draws for the
global batch do not depend on the device count. Evaluation never augments.

- random translation: pad with zeros (the background) by `pad` pixels, crop back at a random
  offset, i.e. shift by up to +-pad pixels in each direction;
- horizontal flip with probability 1/2 (Fashion-MNIST's classes are left-right symmetric);
- random erasing (Zhong et al., 2017), simplified to a square: with probability `prob`, a
  `size` x `size` square at a random position (clipped at the borders) is set to zero.

In a population (many models in one program) each member's values are traced; shapes come
from the population's largest shift (`pad`), and a member draws exactly what a single run with
its values draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# config.augment.flip: no flips, each image with probability 1/2, or each image every other
# epoch (which images: the batch's "flip" mask, from the data order).
FLIPS = ("off", "random", "alternate")


def _off(value) -> bool:
  """A static 0/False (a traced value may be anything)."""
  return isinstance(value, (bool, int, float)) and not value


def random_translate(key, images, pad: int, shift=None):
  """Shift by up to +-`shift` pixels (`pad` by default; a member's traced value in a
  population), padding by `pad` (static, >= shift)."""
  shift = pad if shift is None else shift
  if pad == 0:
    return images
  batch, height, width, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(key, (batch, 2), 0, 2 * shift + 1) + (pad - shift)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, image.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def random_flip(key, images, enabled=True):
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1)) & enabled
  return jnp.where(flip, images[:, :, ::-1, :], images)


def random_erase(key, images, size: int, prob: float):
  if _off(size) or _off(prob):
    return images
  batch, height, width, _ = images.shape
  key_apply, key_y, key_x = jax.random.split(key, 3)
  apply = jax.random.bernoulli(key_apply, prob, (batch, 1, 1, 1))
  # Centres anywhere in the image; the square is clipped at the borders.
  top = jax.random.randint(key_y, (batch, 1, 1, 1), 0, height) - size // 2
  left = jax.random.randint(key_x, (batch, 1, 1, 1), 0, width) - size // 2
  rows = jnp.arange(height)[None, :, None, None]
  cols = jnp.arange(width)[None, None, :, None]
  inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
  return jnp.where(apply & inside, jnp.zeros((), images.dtype), images)


def augment(key, images, *, translate=0, flip=False, erase_size=0, erase_prob=0.0,
            pad: int | None = None, flip_mask=None):
  """All enabled augmentations, each with its own key; the identity when none is enabled.
  `flip_mask` (bools [B]): which images to flip (alternating flips, chosen with the data
  order) instead of a random draw."""
  key_translate, key_flip, key_erase = jax.random.split(key, 3)
  images = random_translate(key_translate, images, translate if pad is None else pad, translate)
  if not _off(flip) and flip_mask is None:
    images = random_flip(key_flip, images, flip)
  elif not _off(flip):
    images = jnp.where(flip_mask[:, None, None, None] & flip, images[:, :, ::-1, :], images)
  return random_erase(key_erase, images, erase_size, erase_prob)
