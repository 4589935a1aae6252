"""The data: IDX parsing and verification, the offline tfds build, the TensorFlow-free reader."""

import hashlib

import numpy as np
import pytest

from conftest import idx_bytes, synthetic_arrays, write_idx_dir
from fmnist_jax import dataset


def test_parse_idx_round_trip():
  images, labels = synthetic_arrays(7)
  parsed = dataset.parse_idx(idx_bytes(images[..., 0]), "x")
  np.testing.assert_array_equal(parsed, images[..., 0])
  np.testing.assert_array_equal(dataset.parse_idx(idx_bytes(labels), "y"), labels)


def test_truncated_and_foreign_files_are_named_in_the_error():
  raw = idx_bytes(synthetic_arrays(5)[0][..., 0])
  with pytest.raises(dataset.DataError, match="truncated.*x.idx|x.idx.*truncated"):
    dataset.parse_idx(raw[:-10], "x.idx")
  with pytest.raises(dataset.DataError, match="not a uint8 IDX file"):
    dataset.parse_idx(b"\x89PNG" + raw[4:], "x.idx")
  with pytest.raises(dataset.DataError, match="too short"):
    dataset.parse_idx(b"\x00\x00", "x.idx")


def test_checksum_mismatch_names_the_file_and_what_to_do(tmp_path):
  checksums = write_idx_dir(tmp_path, 20, 10)
  (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(10, np.uint8)))
  with pytest.raises(dataset.DataError, match="t10k-labels-idx1-ubyte.*SHA-256.*replace"):
    dataset.verify_idx_files(tmp_path, checksums)


def test_corrupt_gzip_is_a_clear_error(tmp_path):
  checksums = write_idx_dir(tmp_path, 20, 10, compress=True)
  path = tmp_path / "train-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-8])
  with pytest.raises(dataset.DataError, match="train-labels-idx1-ubyte.gz.*damaged or truncated"):
    dataset.verify_idx_files(tmp_path, checksums)


def test_explicit_idx_dir_with_missing_files_says_which(tmp_path):
  write_idx_dir(tmp_path, 20, 10)
  (tmp_path / "t10k-images-idx3-ubyte").unlink()
  with pytest.raises(dataset.DataError, match="lacks t10k-images-idx3-ubyte"):
    dataset.find_idx_dir(str(tmp_path))


def test_read_idx_split_without_tensorflow(tmp_path):
  checksums = write_idx_dir(tmp_path, 30, 12, compress=True)
  images, labels = dataset.read_idx_splits(str(tmp_path), checksums)["test"]
  expected_images, expected_labels = synthetic_arrays(12, seed=2)
  order = dataset.tfds_order("test", 12)  # tfds' order: a fixed permutation of the file's
  assert sorted(order.tolist()) == list(range(12)) and order.tolist() != list(range(12))
  np.testing.assert_array_equal(images, expected_images[order])
  np.testing.assert_array_equal(labels, expected_labels[order])


def test_idx_reader_gives_the_arrays_tfds_gives(synthetic_tfds):
  """Without TensorFlow the splits come from the IDX files: the same arrays, in the same order,
  as tfds.load of the dataset prepared from those files."""
  from fmnist_jax import input_pipeline
  from conftest import tiny_config
  config = tiny_config(data=dict(tfds_dir=synthetic_tfds["data_dir"], validation_size=50))
  from_tfds = input_pipeline.load_splits(config)
  idx = dataset.read_idx_splits(str(synthetic_tfds["idx_dir"]), synthetic_tfds["checksums"])
  train_images, train_labels = idx["train"]
  size = synthetic_tfds["train_count"] - 50
  from_idx = {"train": (train_images[:size], train_labels[:size]),
              "val": (train_images[size:], train_labels[size:]), "test": idx["test"]}
  assert set(from_tfds) == set(from_idx)
  for name, (images, labels) in from_tfds.items():
    np.testing.assert_array_equal(images, from_idx[name][0])
    np.testing.assert_array_equal(labels, from_idx[name][1])
    assert labels.dtype == from_idx[name][1].dtype == np.int32


def test_offline_build_gives_a_standard_tfds_dataset(synthetic_tfds):
  import tensorflow_datasets as tfds
  data_dir = synthetic_tfds["data_dir"]
  assert dataset.is_prepared(data_dir)
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  assert str(builder.info.version) == "3.0.1"
  assert builder.info.features["label"].names[6] == "Shirt"
  assert builder.info.splits["train"].num_examples == synthetic_tfds["train_count"]
  test = tfds.as_numpy(tfds.load("fashion_mnist", split="test", data_dir=data_dir,
                                 batch_size=-1, download=False))
  images, labels = synthetic_arrays(synthetic_tfds["test_count"], seed=2)
  # tfds shuffles examples when it writes them; the contents are the same.
  assert test["image"].shape == (synthetic_tfds["test_count"], 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(test["label"], minlength=10),
                                np.bincount(labels, minlength=10))
  assert int(test["image"].astype(np.int64).sum()) == int(images.astype(np.int64).sum())


def test_prepare_reuses_a_prepared_dataset(synthetic_tfds):
  # Prepared already: no IDX files or checksums are needed.
  assert dataset.prepare(synthetic_tfds["data_dir"], idx_dir="") == synthetic_tfds["data_dir"]


def test_a_failed_build_never_looks_prepared(tmp_path):
  checksums = write_idx_dir(tmp_path / "idx", 20, 10)
  labels = tmp_path / "idx" / dataset.IDX_FILES["train_labels"]  # 19 labels for 20 images
  labels.write_bytes(idx_bytes(np.zeros(19, np.uint8)))
  checksums["train_labels"] = hashlib.sha256(labels.read_bytes()).hexdigest()
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(dataset.DataError, match="has 19 examples, expected 20"):
    dataset.build_from_idx(data_dir, tmp_path / "idx", checksums)
  assert not dataset.is_prepared(data_dir)
  checksums["train_data"] = "0" * 64
  with pytest.raises(dataset.DataError, match="SHA-256"):
    dataset.prepare(data_dir, str(tmp_path / "idx"), checksums)
  assert not dataset.is_prepared(data_dir)


def test_a_gzip_file_overwritten_in_the_middle_is_a_clear_error(tmp_path):
  """Header intact, bytes changed at an offset: zlib's own error becomes the DataError."""
  checksums = write_idx_dir(tmp_path, 300, 10, compress=True)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(64)
  path.write_bytes(bytes(data))
  with pytest.raises(dataset.DataError, match="train-images-idx3-ubyte.gz.*damaged"):
    dataset.read_idx_splits(str(tmp_path), checksums)


_PREPARE = """
import json, sys
from fmnist_jax import dataset
dataset.IDX_SHA256.update(json.loads(sys.argv[1]))  # the synthetic IDX files' checksums
dataset.main(sys.argv[2:])
"""


@pytest.mark.slow
def test_two_processes_preparing_one_data_dir_at_once_both_succeed(synthetic_tfds, tmp_path):
  """Two runs starting at once in an empty data dir: one prepares, the other waits for it."""
  import json
  import subprocess
  import sys
  from conftest import ROOT
  command = [sys.executable, "-c", _PREPARE, json.dumps(synthetic_tfds["checksums"]),
             "--prepare", "--data_dir", str(tmp_path / "tfds"),
             "--idx_dir", str(synthetic_tfds["idx_dir"])]
  processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for process, (out, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-3000:]
    assert "fashion_mnist is prepared in" in out
    # One line of the project's own while it builds: no tfds banner, bars or warnings.
    assert "Downloading and preparing" not in out + err and "%|" not in out + err, err
  assert dataset.is_prepared(str(tmp_path / "tfds"))
