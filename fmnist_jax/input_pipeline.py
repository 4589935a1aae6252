"""Batches for training and evaluation.

Training, two modes with the same semantics (drop the last partial batch; the order of an
epoch is a pure function of (seed, epoch), so a resumed run sees exactly the same batches):

- "tfds":   tf.data over tfds' split for this process (`tfds.even_splits`): cache -> shuffle
            (seeded per epoch) -> batch -> prefetch; each batch is handed to the devices.
- "device": the whole split lives on the devices (47 MB of uint8); each epoch is a permutation
            and each step a gather on device. No host work per step beyond a few indices.

Each train batch has a leading `steps` axis and a member axis: (steps_per_call, members, batch,
...) so several steps can run inside one compiled call (members: fmnist_jax.population; a
single run has one). Every call gets exactly steps_per_call steps (an epoch's last call
is padded) and the number that count, so one compiled program serves the whole run. Images stay
uint8 until the step calls `models.normalize` on device.

The arrays come from tfds when TensorFlow is installed, else from the verified IDX files in
tfds' order (`dataset.read_idx_splits`): the same arrays either way.

Evaluation: the whole split, padded to full batches with a `mask`, so every example counts
exactly once on any number of devices or processes.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator

import jax
import numpy as np

from fmnist_jax import data_cache, dataset
from fmnist_jax.errors import ConfigError
from fmnist_jax.parallel import Parallelism

INPUT_MODES = ("device", "tfds")
FLIP_STREAM = 0x466C6970  # alternating flips' coins: a seed stream apart from the orders'


def split_names(validation_size: int) -> dict[str, str]:
  """tfds split strings: the validation split is the last `validation_size` training images."""
  if not validation_size:
    return {"train": "train", "test": "test"}
  return {"train": f"train[:-{validation_size}]", "val": f"train[-{validation_size}:]",
          "test": "test"}


def epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_order(seed: int, epoch: int, num_examples: int, steps: int, batch_size: int):
  """The example indices of every batch of an epoch: (steps, batch_size)."""
  order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(num_examples)
  return order[:steps * batch_size].reshape(steps, batch_size)


def alternate_flips(seed: int, epoch: int, order: np.ndarray, num_examples: int) -> np.ndarray:
  """Alternating flips (airbench): example i is mirrored in epoch e iff coin_i XOR (e mod 2),
  coin_i a fair coin per example drawn once from the seed: random in any one epoch, and every
  image seen both ways in every two epochs. Bools shaped like `order`."""
  coins = np.random.default_rng([seed, FLIP_STREAM]).integers(0, 2, num_examples, np.uint8)
  return (coins[order] ^ (epoch % 2)).astype(bool)


class DeviceTrainData:
  """The training split resident on the devices. Each epoch's order is sent to the devices
  once; each call is one gather of its steps' batches, on device. Each member has its own
  order, drawn from its seed: batches (steps, members, batch, ...), member m's those of a
  single run with seeds[m]. With `flips` (alternating flips), each batch also has 'flip':
  which of its images to mirror (sent as 2 * index + flip, one array). `extra`: more arrays
  per image, gathered with them (a distillation teacher's predictions)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, par: Parallelism,
               batch_size: int, seeds: tuple, flips: bool = False, extra=None):
    self.par, self.batch_size, self.seeds = par, batch_size, tuple(seeds)
    self.num_examples, self.flips = len(images), flips
    self.steps_per_epoch = self.num_examples // batch_size
    self.data = par.replicate({"image": images, "label": labels, **(extra or {})})

    def gather(data, order, start, steps: int):
      index = jax.lax.dynamic_slice_in_dim(order, start, steps)
      batch = jax.tree.map(lambda x: x[index // 2 if flips else index], data)
      batch.update({"flip": index % 2 == 1} if flips else {})
      return jax.tree.map(lambda x: par.batch_layout(x, batch_axis=2), batch)
    self.gather = jax.jit(gather, static_argnums=3)

  def epoch_order(self, epoch: int, pad_steps: int = 0):
    """The epoch's batches of indices on the devices, with `pad_steps` rows of zeros after:
    (steps, members, batch)."""
    orders = [epoch_order(seed, epoch, self.num_examples, self.steps_per_epoch,
                          self.batch_size) for seed in self.seeds]
    if self.flips:
      orders = [2 * order + alternate_flips(seed, epoch, order, self.num_examples)
                for seed, order in zip(self.seeds, orders)]
    order = np.stack(orders, 1)
    return self.par.replicate(np.pad(order, ((0, pad_steps),) + ((0, 0),) * (order.ndim - 1)))

  def batches(self, epoch: int, first_step: int, steps_per_call: int) -> Iterator:
    """(batches with steps_per_call steps, how many of them are the epoch's) per call."""
    order = self.epoch_order(epoch, steps_per_call - 1)
    for start in range(first_step, self.steps_per_epoch, steps_per_call):
      yield (self.gather(self.data, order, start, steps_per_call),
             min(steps_per_call, self.steps_per_epoch - start))


class TfdsTrainData:
  """tf.data streaming over this process's part of the training split, for one member (one
  stream per run): batches (steps, 1, batch, ...)."""

  def __init__(self, data_dir: str, split: str, par: Parallelism, batch_size: int, seed: int):
    import tensorflow_datasets as tfds
    self.par, self.seed = par, seed
    self.local_batch_size = par.local_batch_size(batch_size)
    process_splits = tfds.even_splits(split, n=jax.process_count())
    builder = tfds.builder(dataset.DATASET_NAME, data_dir=data_dir)
    # Every process must run the same number of steps: the smallest shard decides.
    sizes = [builder.info.splits[s].num_examples for s in process_splits]
    self.num_examples = sizes[jax.process_index()]
    self.steps_per_epoch = min(sizes) // self.local_batch_size
    ds = builder.as_dataset(split=process_splits[jax.process_index()], shuffle_files=False)
    self._base = ds.map(lambda x: (x["image"], x["label"])).cache()

  def batches(self, epoch: int, first_step: int, steps_per_call: int) -> Iterator:
    import tensorflow as tf
    import tensorflow_datasets as tfds
    ds = self._base.shuffle(self.num_examples, seed=epoch_seed(self.seed, epoch),
                            reshuffle_each_iteration=False)
    ds = ds.batch(self.local_batch_size, drop_remainder=True).take(self.steps_per_epoch)
    ds = ds.skip(first_step).batch(steps_per_call).prefetch(tf.data.AUTOTUNE)
    for images, labels in tfds.as_numpy(ds):
      num = len(images)
      pad = ((0, steps_per_call - num),) + ((0, 0),) * (images.ndim - 1)
      batch = {"image": np.pad(images, pad), "label": np.pad(labels.astype(np.int32), pad[:2])}
      batch = jax.tree.map(lambda x: np.expand_dims(x, 1), batch)  # the member axis
      yield self.par.shard(batch, batch_axis=2), num


def eval_batches(images: np.ndarray, labels: np.ndarray, par: Parallelism,
                 batch_size: int) -> list[dict]:
  """A whole split as padded global batches with a mask; every process holds the whole split."""
  count = len(images)
  num_batches = max(1, math.ceil(count / batch_size))
  pad = num_batches * batch_size - count
  mask = np.concatenate([np.ones(count, np.float32), np.zeros(pad, np.float32)])
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  local = par.local_batch_size(batch_size)
  start = jax.process_index() * local
  batches = []
  for b in range(num_batches):
    rows = slice(b * batch_size + start, b * batch_size + start + local)
    batches.append(par.shard({"image": images[rows], "label": labels[rows], "mask": mask[rows]}))
  return batches


def load_splits(config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """train/val/test as in-memory arrays (the last validation_size training examples are val):
  from the decoded-data cache (fmnist_jax.data_cache) when it holds them, else from tfds
  (prepared offline if needed) where TensorFlow is installed, else from the verified IDX files
  in tfds' order. The three give the same arrays."""
  arrays = data_cache.load(config, functools.partial(_read_source, config))
  images, labels = arrays["train"]
  size = len(labels) - config.data.validation_size
  splits = {"train": (images[:size], labels[:size]), "test": arrays["test"]}
  if config.data.validation_size:
    splits["val"] = (images[size:], labels[size:])
  return splits


def _read_source(config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  if dataset.tensorflow_available():
    data_dir = dataset.prepare(config.data.tfds_dir, config.data.idx_dir)
    return {split: dataset.load_arrays(data_dir, split) for split in ("train", "test")}
  return dataset.read_idx_splits(config.data.idx_dir)


def check_input_mode(config) -> None:
  """input_mode=tfds streams through tf.data: a clear error, before any work, without it."""
  if config.data.input_mode == "tfds" and not dataset.tensorflow_available():
    raise ConfigError("data.input_mode='tfds' streams through tf.data, and tensorflow / "
                      "tensorflow-datasets are not installed: `pip install tensorflow-cpu "
                      "tensorflow-datasets`, or use --config.data.input_mode=device (the "
                      "default).")


def create_train_data(config, par: Parallelism, splits, seeds: tuple, alternate: bool = False,
                      extra=None):
  """The config's training batches; `seeds`: the members' data orders (tfds: one member);
  `alternate`: each batch says which images to flip (augment.flip="alternate"); `extra`: more
  arrays per training image for the batches (input_mode=device)."""
  if config.data.input_mode == "device":
    images, labels = splits["train"]
    return DeviceTrainData(images, labels, par, config.run.batch_size, seeds,
                           flips=alternate, extra=extra)
  data_dir = dataset.default_data_dir(config.data.tfds_dir)
  return TfdsTrainData(data_dir, split_names(config.data.validation_size)["train"], par,
                       config.run.batch_size, config.run.seed)
