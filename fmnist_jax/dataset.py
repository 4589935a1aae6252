"""Getting Fashion-MNIST: tfds when prepared, else an offline build from local IDX files.

Order: already prepared in `data_dir` -> build from local IDX files (`idx_dir`,
`$FMNIST_IDX_DIR`, or Debian's `dataset-fashion-mnist`) -> tfds' own download.

The offline build reuses tfds' own `FashionMNIST` builder (same name, version, features and
parsing code); only the download step is replaced by verified local files. tfds writes into a
temporary directory and renames it when complete, so a failed build never looks prepared.

Without TensorFlow (the usual CUDA/TPU JAX image): `read_idx_splits` reads the verified IDX files
with numpy alone and puts the examples in tfds' own order (tfds sorts each split by the MD5 of
the split name and the example's index), so both paths give the same arrays.

Command line: `python -m fmnist_jax.dataset --prepare [--data_dir D] [--idx_dir I]`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import os
import pathlib
import tempfile
import zlib
from typing import Mapping

import numpy as np

from fmnist_jax.errors import DataError  # re-exported: dataset.DataError

DATASET_NAME = "fashion_mnist"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
NUM_TRAIN = 60_000
NUM_TEST = 10_000
DEBIAN_IDX_DIR = "/usr/share/datasets/fashion-mnist"

# The four IDX files, keyed the way tfds' MNIST builder names them. SHA-256 of the *decompressed*
# contents: Debian recompressed the .gz files, so tfds' checksums of the originals do not apply.
IDX_FILES = {
    "train_data": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_data": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_SHA256 = {
    "train_data": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test_data": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_IDX_MAGIC = {3: 2051, 1: 2049}  # number of dimensions -> magic number




def tensorflow_available() -> bool:
  """Whether tfds (and the TensorFlow it needs) can be imported here."""
  try:
    return all(importlib.util.find_spec(name) is not None
               for name in ("tensorflow", "tensorflow_datasets"))
  except (ImportError, ValueError):  # a module set to None in sys.modules, e.g. by tests
    return False


def default_data_dir(data_dir: str = "") -> str:
  """The tfds data directory: the config's, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if data_dir:
    return os.path.expanduser(data_dir)
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def find_idx_dir(idx_dir: str = "") -> pathlib.Path | None:
  """The first directory holding the four IDX files (.gz or raw), or None."""
  candidates = [idx_dir, os.environ.get("FMNIST_IDX_DIR", ""), DEBIAN_IDX_DIR]
  for i, candidate in enumerate(c for c in candidates if c):
    path = pathlib.Path(candidate).expanduser()
    if all(_idx_path(path, name) for name in IDX_FILES.values()):
      return path
    if i == 0 and idx_dir:  # An explicitly configured directory must be complete.
      missing = [n for n in IDX_FILES.values() if not _idx_path(path, n)]
      raise DataError(
          f"idx_dir={idx_dir!r} lacks {', '.join(missing)} (looked for the name with and "
          "without .gz). Point config.data.idx_dir at a directory with all four Fashion-MNIST IDX "
          "files, or set it to '' to use $FMNIST_IDX_DIR or " + DEBIAN_IDX_DIR + ".")
  return None


def _idx_path(directory: pathlib.Path, name: str) -> pathlib.Path | None:
  for candidate in (directory / (name + ".gz"), directory / name):
    if candidate.is_file():
      return candidate
  return None


def _read_bytes(path: pathlib.Path) -> bytes:
  try:
    if path.suffix == ".gz":
      with gzip.open(path, "rb") as f:
        return f.read()
    return path.read_bytes()
  except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f"Cannot read {path}: {e}. The file is damaged or truncated; replace it "
                    "(e.g. `apt-get install --reinstall dataset-fashion-mnist`).") from e


def parse_idx(raw: bytes, path, expected_count: int | None = None) -> np.ndarray:
  """Parses IDX bytes (images: N x 28 x 28, labels: N), checking the header against the size."""
  if len(raw) < 8:
    raise DataError(f"{path} is too short to be an IDX file ({len(raw)} bytes).")
  magic = int.from_bytes(raw[0:4], "big")
  ndim = magic & 0xFF
  if ndim not in _IDX_MAGIC or magic != _IDX_MAGIC[ndim]:
    raise DataError(f"{path} is not a uint8 IDX file (magic number {magic:#010x}, expected "
                    "0x00000803 for images or 0x00000801 for labels).")
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  if len(raw) != header + int(np.prod(shape)):
    raise DataError(f"{path} holds {len(raw) - header} data bytes but its header announces "
                    f"shape {shape}: the file is truncated or corrupt; replace it.")
  if expected_count is not None and shape[0] != expected_count:
    raise DataError(f"{path} has {shape[0]} examples, expected {expected_count}.")
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def verify_idx_files(idx_dir: pathlib.Path,
                     checksums: Mapping[str, str] | None = None) -> dict[str, bytes]:
  """Reads the four files, checks each decompressed SHA-256; returns key -> raw bytes."""
  checksums = IDX_SHA256 if checksums is None else checksums
  contents = {}
  for key, name in IDX_FILES.items():
    path = _idx_path(idx_dir, name)
    if path is None:
      raise DataError(f"{idx_dir} has no {name}(.gz).")
    raw = _read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != checksums[key]:
      raise DataError(
          f"{path} does not match Fashion-MNIST: SHA-256 of its decompressed contents is "
          f"{digest}, expected {checksums[key]}. The file is corrupt or is another dataset; "
          "replace it (e.g. `apt-get install --reinstall dataset-fashion-mnist`).")
    contents[key] = raw
  return contents


def tfds_order(split: str, count: int) -> np.ndarray:
  """The file indices of a split in the order tfds stores them: sorted by md5(split + index)
  (tfds.core.hashing, with the split name as salt)."""
  salt = hashlib.md5(split.encode())

  def key(index):
    md5 = salt.copy()
    md5.update(str(index).encode())
    return int(md5.hexdigest(), 16)
  return np.array(sorted(range(count), key=key))


def read_idx_splits(idx_dir: str = "", checksums: Mapping[str, str] | None = None
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'train', 'test'}: (images uint8 [N,28,28,1], labels int32 [N]) from the verified IDX
  files, in tfds' order: the arrays `tfds.load` gives. Needs numpy only."""
  directory = find_idx_dir(idx_dir)
  if directory is None:
    raise DataError("No Fashion-MNIST IDX files found: set config.data.idx_dir or $FMNIST_IDX_DIR, "
                    "or install Debian's dataset-fashion-mnist (or install tensorflow-datasets "
                    "to download them).")
  raw = verify_idx_files(directory, checksums)
  splits = {}
  for split in ("train", "test"):
    images = parse_idx(raw[f"{split}_data"], directory / IDX_FILES[f"{split}_data"])
    labels = parse_idx(raw[f"{split}_labels"], directory / IDX_FILES[f"{split}_labels"])
    order = tfds_order(split, len(labels))
    splits[split] = images[order][..., None], labels[order].astype(np.int32)
  return splits


# ---------------------------------------------------------------------------------------------
# tfds
# ---------------------------------------------------------------------------------------------

class _LocalFiles:
  """Stands in for tfds' DownloadManager: hands the builder already verified local files."""

  def __init__(self, paths: Mapping[str, str]):
    self._paths = dict(paths)

  def download_and_extract(self, url_or_urls):
    return {key: self._paths[key] for key in url_or_urls}


def _local_builder(data_dir: str, local_paths: Mapping[str, str], counts: Mapping[str, int]):
  import tensorflow_datasets as tfds
  from tensorflow_datasets.image_classification import mnist

  with tfds.core.registered.skip_registration():

    class LocalFashionMNIST(mnist.FashionMNIST):
      """tfds' FashionMNIST (same name, version, features), fed from local files."""
      name = DATASET_NAME

      def _split_generators(self, dl_manager):
        del dl_manager
        generators = super()._split_generators(_LocalFiles(local_paths))
        for generator in generators:  # (tfds' own builder assumes 60,000 / 10,000)
          generator.gen_kwargs["num_examples"] = counts[str(generator.name)]
        return generators

  return LocalFashionMNIST(data_dir=data_dir)


def _split_counts(contents: Mapping[str, bytes], idx_dir) -> dict[str, int]:
  """Each split's example count, the same in its images and its labels. (The checksums pin
  the real files' counts; other verified files, such as the tests' small copies, keep theirs.)"""
  counts = {}
  for split in ("train", "test"):
    images = parse_idx(contents[f"{split}_data"],
                       pathlib.Path(idx_dir) / IDX_FILES[f"{split}_data"])
    parse_idx(contents[f"{split}_labels"], pathlib.Path(idx_dir) / IDX_FILES[f"{split}_labels"],
              len(images))
    counts[split] = len(images)
  return counts


def build_from_idx(data_dir: str, idx_dir: pathlib.Path,
                   checksums: Mapping[str, str] | None = None) -> None:
  """Verifies local IDX files and prepares tfds' fashion_mnist from them in `data_dir`."""
  import logging as std_logging
  import tensorflow_datasets as tfds
  from absl import logging
  contents = verify_idx_files(idx_dir, checksums)
  counts = _split_counts(contents, idx_dir)
  logging.info("building tfds' copy of fashion_mnist in %s from the IDX files in %s (once: "
               "later runs load it)", data_dir, idx_dir)
  tfds_logger = std_logging.getLogger("absl")  # (tfds logs through absl)
  level = tfds_logger.level
  with tempfile.TemporaryDirectory(prefix="fmnist_idx_") as tmp:
    paths = {}
    for key, raw in contents.items():  # tfds' parser reads decompressed files.
      paths[key] = os.path.join(tmp, IDX_FILES[key])
      with open(paths[key], "wb") as f:
        f.write(raw)
    tfds.disable_progress_bar()  # (its bars and "Downloading and preparing": one line above)
    tfds_logger.setLevel(std_logging.ERROR)
    try:
      with contextlib.redirect_stdout(io.StringIO()):  # (tfds prints its banner there)
        _local_builder(data_dir, paths, counts).download_and_prepare()
    finally:
      tfds_logger.setLevel(level)


def is_prepared(data_dir: str) -> bool:
  import tensorflow_datasets as tfds
  return tfds.builder(DATASET_NAME, data_dir=data_dir).is_prepared()


def prepare(data_dir: str = "", idx_dir: str = "",
            checksums: Mapping[str, str] | None = None) -> str:
  """Makes sure tfds has fashion_mnist in data_dir; returns the data_dir used."""
  data_dir = default_data_dir(data_dir)
  with _hidden_gpus(), _preparing(data_dir):
    if is_prepared(data_dir):  # (also when another process prepared it while this one waited)
      warn_idx_dir_unused(idx_dir, data_dir)
      return data_dir
    local = find_idx_dir(idx_dir)
    if local is not None:
      build_from_idx(data_dir, local, checksums)
      return data_dir
    import tensorflow_datasets as tfds
    try:
      tfds.builder(DATASET_NAME, data_dir=data_dir).download_and_prepare()
    except Exception as e:  # Any download failure: say what the offline options are.
      raise DataError(
          f"fashion_mnist is not prepared in {data_dir}, no local IDX files were found, and "
          f"tfds' download failed ({type(e).__name__}: {str(e)[:200]}). Offline, install "
          "Debian's dataset-fashion-mnist (`make data`), or set config.data.idx_dir / "
          "$FMNIST_IDX_DIR to a directory with the four IDX files.") from e
  return data_dir


def warn_idx_dir_unused(idx_dir: str, data_dir: str) -> None:
  """What the user named is not read (tfds' copy is prepared): say so."""
  if idx_dir:
    from absl import logging
    logging.warning("idx_dir=%r is not used: tfds' copy of fashion_mnist in %s is "
                    "already prepared (delete %s to rebuild it from the IDX files)", idx_dir,
                    data_dir, os.path.join(data_dir, DATASET_NAME))


@contextlib.contextmanager
def _preparing(data_dir: str):
  """One process prepares a data_dir at a time (an flock on DATA_DIR/.fashion_mnist.lock):
  two runs starting at once in an empty data_dir would otherwise build the same folders."""
  import fcntl
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{DATASET_NAME}.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _hidden_gpus():
  """TensorFlow must not grab the accelerator's memory from JAX."""
  import tensorflow as tf
  with contextlib.suppress(RuntimeError):  # Already initialised: the setting stands.
    tf.config.set_visible_devices([], "GPU")
  yield


def load_arrays(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole tfds split (e.g. 'train[:55000]') as (images uint8 [N,28,28,1], labels int32)."""
  import tensorflow_datasets as tfds
  try:
    with _hidden_gpus():
      ds = tfds.load(DATASET_NAME, split=split, data_dir=data_dir, batch_size=-1,
                     download=False)
      arrays = tfds.as_numpy(ds)
  except Exception as e:  # TensorFlow's DataLossError, NotFoundError, ...: a damaged copy
    folder = os.path.join(data_dir, DATASET_NAME)
    raise DataError(
        f"the prepared copy of {DATASET_NAME} in {folder} is damaged ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200]}): delete that folder and it is rebuilt from the IDX "
        "files (or downloaded) at the next start.") from e
  return arrays["image"], arrays["label"].astype(np.int32)


def quiet_tensorflow() -> None:
  """For the command-line entry points, before TensorFlow is imported: no C++ INFO lines, and
  no oneDNN banner (printed twice at import, whatever the log level). oneDNN only speeds up
  TensorFlow's float math, and this package gives TensorFlow none: it reads, shuffles and
  batches uint8 images. (The Keras peer benchmark, which trains in TensorFlow, keeps it.)
  Either can be set otherwise in the environment."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main(argv=None):
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--prepare", action="store_true", help="prepare tfds' fashion_mnist")
  parser.add_argument("--data_dir", default="", type=os.path.expanduser)
  parser.add_argument("--idx_dir", default="", type=os.path.expanduser)
  args = parser.parse_args(argv)
  if not args.prepare:
    parser.error("nothing to do: pass --prepare")
  quiet_tensorflow()
  from fmnist_jax import console
  console.configure()
  target = pathlib.Path(args.data_dir or default_data_dir(""))
  existing = next(p for p in [target, *target.parents] if p.exists())
  if not existing.is_dir() or not os.access(existing, os.W_OK):
    raise SystemExit(f"error: cannot prepare fashion_mnist in {target}: {existing} is "
                     f"{'not a folder' if not existing.is_dir() else 'not writable'}; pass a "
                     "writable --data_dir.")
  try:
    data_dir = prepare(args.data_dir, args.idx_dir)
  except DataError as e:
    raise SystemExit(f"error: {e}") from None
  print(f"fashion_mnist is prepared in {data_dir}")


if __name__ == "__main__":
  main()
