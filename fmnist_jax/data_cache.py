"""The decoded dataset, cached as .npy files: a run's data in a fraction of a second, without
importing TensorFlow.

An entry is a folder under the cache directory named by a digest of its source: the prepared
tfds copy's files (or, without TensorFlow, the IDX files), with their paths, sizes and
modification times. Another or a changed source is another entry, so a cache never serves
other data than the source would. An entry holds the train and test images and labels as .npy
files (memory-mapped on load) and index.json with their CRC-32s, checked at every load; a
damaged entry is rebuilt from the source with a warning. Entries are written into a temporary
folder and renamed into place, so none is ever half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import zlib
from typing import Callable

import numpy as np

from fmnist_jax import dataset

ENV = "FMNIST_JAX_DATA_CACHE_DIR"  # takes precedence over config.data.cache_dir
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
Splits = dict  # {"train": (images, labels), "test": (images, labels)}


def cache_dir(config) -> pathlib.Path | None:
  """$FMNIST_JAX_DATA_CACHE_DIR, else config.data.cache_dir; None when "" (off)."""
  path = os.environ.get(ENV, config.data.cache_dir)
  return pathlib.Path(path).expanduser() if path else None


def source_files(config) -> list[pathlib.Path] | None:
  """The files the splits are read from, as the loader would choose them, or None when the
  source is not ready yet (tfds' copy still to be prepared or downloaded)."""
  if dataset.tensorflow_available():
    folder = pathlib.Path(dataset.default_data_dir(config.data.tfds_dir)) / dataset.DATASET_NAME
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return files if any(p.name == "dataset_info.json" for p in files) else None
  directory = dataset.find_idx_dir(config.data.idx_dir)
  if directory is None:
    return None
  return [dataset._idx_path(directory, name) for name in dataset.IDX_FILES.values()]


def _key(files: list[pathlib.Path]) -> str:
  digest = hashlib.sha256()
  for path in files:
    stat = path.stat()
    digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:20]


def _crc(array: np.ndarray) -> int:
  return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _read(entry: pathlib.Path) -> Splits | None:
  """The entry's splits, or None if it is missing; raises ValueError if it is damaged."""
  try:
    index = json.loads((entry / "index.json").read_text())
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise ValueError(f"index.json unreadable ({e})") from None
  arrays = {}
  for name in ARRAYS:
    try:
      arrays[name] = np.load(entry / f"{name}.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
      raise ValueError(f"{name}.npy unreadable ({e})") from None
    if _crc(arrays[name]) != index.get(name):
      raise ValueError(f"{name}.npy does not match its checksum")
  return {split: (arrays[f"{split}_images"], arrays[f"{split}_labels"])
          for split in ("train", "test")}


def _off(directory: pathlib.Path, why: str) -> None:
  from absl import logging
  logging.warning("the data cache is off for this run: %s %s (set $%s or data.cache_dir to a "
                  "folder, or to \"\" to turn it off); the data is read from its source",
                  directory, why, ENV)


def _write(entry: pathlib.Path, splits: Splits, files: list[pathlib.Path]) -> None:
  try:
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
  except OSError as e:
    return _off(entry.parent, f"cannot be written ({e.strerror or e})")
  try:
    index = {"source": [str(p) for p in files]}
    for split in ("train", "test"):
      for name, array in zip(("images", "labels"), splits[split]):
        np.save(staging / f"{split}_{name}.npy", array)
        index[f"{split}_{name}"] = _crc(array)
    (staging / "index.json").write_text(json.dumps(index, indent=1))
    shutil.rmtree(entry, ignore_errors=True)
    os.rename(staging, entry)  # (another process may have won the race: then it stays)
  except OSError:
    pass
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def load(config, read_source: Callable[[], Splits]) -> Splits:
  """The full train and test splits: from the cache when it holds this source's, else from
  `read_source()` (then cached). A cache folder that is not one, or cannot be written, is
  skipped with one line saying so: the run needs only the source."""
  directory = cache_dir(config)
  if directory and directory.exists() and not directory.is_dir():
    _off(directory, "is not a folder")
    directory = None
  files = source_files(config) if directory else None
  if files:
    entry = directory / _key(files)
    try:
      cached = _read(entry)
    except ValueError as e:
      from absl import logging
      logging.warning("the data cache %s is damaged (%s): rebuilt from the source", entry, e)
      cached = None
    if cached is not None:
      if dataset.tensorflow_available():  # (the source is tfds' copy, as in dataset.prepare)
        dataset.warn_idx_dir_unused(config.data.idx_dir,
                                    dataset.default_data_dir(config.data.tfds_dir))
      return cached
  if directory:
    from absl import logging
    logging.info("reading Fashion-MNIST from its source into the data cache %s (once; the "
                 "next runs read it from there in a second)", directory)
  splits = read_source()
  files = source_files(config) if directory else None  # (tfds may have prepared it just now)
  if files:
    _write(directory / _key(files), splits, files)
  return splits
