"""The decoded-data cache: the same arrays as the source, read without it; a damaged entry is
rebuilt with a warning; a changed source is another entry; a start from the cache imports no
TensorFlow."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from fmnist_jax import data_cache, input_pipeline


@pytest.fixture
def cache(tmp_path, monkeypatch, synthetic_tfds):
  """A fresh cache folder, and a count of the reads that went to the source."""
  monkeypatch.setenv(data_cache.ENV, str(tmp_path / "cache"))
  reads = []
  read_source = input_pipeline._read_source
  monkeypatch.setattr(input_pipeline, "_read_source",
                      lambda config: reads.append(1) or read_source(config))
  config = tiny_config(data=dict(tfds_dir=synthetic_tfds["data_dir"], validation_size=50))
  return {"dir": tmp_path / "cache", "reads": reads, "config": config,
          "train_count": synthetic_tfds["train_count"]}


def _assert_same(a, b):
  assert set(a) == set(b)
  for name in a:
    for x, y in zip(a[name], b[name]):
      np.testing.assert_array_equal(x, y)
      assert x.dtype == y.dtype


def test_the_cache_gives_the_source_s_arrays_without_reading_it(cache):
  first = input_pipeline.load_splits(cache["config"])
  second = input_pipeline.load_splits(cache["config"])
  assert len(cache["reads"]) == 1
  _assert_same(first, second)
  assert second["val"][1].shape == (50,)
  assert second["train"][0].shape == (cache["train_count"] - 50, 28, 28, 1)


def test_a_damaged_entry_is_rebuilt_with_a_warning(cache, caplog):
  reference = input_pipeline.load_splits(cache["config"])
  labels = next(cache["dir"].glob("*/train_labels.npy"))
  raw = bytearray(labels.read_bytes())
  raw[-1] ^= 0xFF
  labels.write_bytes(bytes(raw))
  again = input_pipeline.load_splits(cache["config"])
  assert len(cache["reads"]) == 2
  assert "data cache" in caplog.text and "damaged" in caplog.text
  _assert_same(reference, again)
  input_pipeline.load_splits(cache["config"])  # the rebuilt entry serves again
  assert len(cache["reads"]) == 2


def test_a_changed_source_is_read_again(cache, synthetic_tfds):
  input_pipeline.load_splits(cache["config"])
  info = next(pathlib.Path(synthetic_tfds["data_dir"]).rglob("dataset_info.json"))
  stat = info.stat()
  os.utime(info, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
  input_pipeline.load_splits(cache["config"])
  assert len(cache["reads"]) == 2 and len(list(cache["dir"].glob("*/index.json"))) == 2


def test_an_empty_cache_dir_turns_it_off(cache, monkeypatch):
  monkeypatch.setenv(data_cache.ENV, "")
  for _ in range(2):
    input_pipeline.load_splits(cache["config"])
  assert len(cache["reads"]) == 2 and not cache["dir"].exists()


def test_a_cache_folder_that_is_a_file_turns_it_off_in_one_line(cache, caplog):
  cache["dir"].write_text("a file, not a folder")
  for _ in range(2):
    splits = input_pipeline.load_splits(cache["config"])
  assert len(cache["reads"]) == 2 and len(splits["train"][1]) == cache["train_count"] - 50
  assert cache["dir"].read_text() == "a file, not a folder"  # left as it was
  lines = [r.getMessage() for r in caplog.records if "data cache" in r.getMessage()]
  assert lines and all("is off for this run" in line and "is not a folder" in line
                       for line in lines) and "damaged" not in caplog.text


_LOAD = """
import sys
from conftest import tiny_config
from fmnist_jax import input_pipeline
input_pipeline.load_splits(tiny_config(data=dict(tfds_dir=sys.argv[1])))
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def test_a_start_from_the_cache_imports_no_tensorflow(cache, synthetic_tfds):
  input_pipeline.load_splits(cache["config"])
  env = {**os.environ, data_cache.ENV: str(cache["dir"]),
         "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
  out = subprocess.run([sys.executable, "-c", _LOAD, synthetic_tfds["data_dir"]], env=env,
                       capture_output=True, text=True, check=True).stdout
  assert "tensorflow imported: False" in out
