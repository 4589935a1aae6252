"""Shared fixtures: synthetic Fashion-MNIST-like data, written by the tests themselves."""

import atexit
import gzip
import hashlib
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _session_folder(variable: str, prefix: str) -> None:
  """A fresh folder named by $variable for this test session (made by the first process: the
  pytest-xdist workers and the subprocesses inherit it), removed at its end."""
  if variable not in os.environ:
    os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, os.environ[variable], ignore_errors=True)


# One persistent XLA compilation cache for this session, set before jax is imported so that
# the workers and subprocesses compile each identical step once, not once per process.
_session_folder("JAX_COMPILATION_CACHE_DIR", "fmnist_jax_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The decoded-data cache too: the tests' synthetic sources never land in the user's cache.
_session_folder("FMNIST_JAX_DATA_CACHE_DIR", "fmnist_jax_data_cache_")
# XLA's optimisation passes mostly off (as flax's imagenet example test runs): the tests'
# programs are tiny and compiling them is most of the suite's time (docs/usage.md, "Tests").
# The stored one-step numbers are also checked with them on (tests/test_train.py).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

from fmnist_jax import dataset  # noqa: E402


def synthetic_arrays(count: int, seed: int = 0):
  """Learnable images: a fixed random template per class plus noise. (uint8 [N,28,28,1], int32)."""
  templates = np.random.default_rng(1234).integers(0, 256, (10, 28, 28, 1))
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, count).astype(np.int32)
  noise = rng.integers(-60, 60, (count, 28, 28, 1))
  images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
  return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
  """The IDX encoding of a uint8 array (images N x 28 x 28, or labels N)."""
  magic = 0x800 | array.ndim
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory: pathlib.Path, train_count: int, test_count: int,
                  compress: bool = False) -> dict[str, str]:
  """Writes the four IDX files; returns their decompressed SHA-256 checksums."""
  directory.mkdir(parents=True, exist_ok=True)
  train_images, train_labels = synthetic_arrays(train_count, seed=1)
  test_images, test_labels = synthetic_arrays(test_count, seed=2)
  arrays = {"train_data": train_images[..., 0], "train_labels": train_labels,
            "test_data": test_images[..., 0], "test_labels": test_labels}
  checksums = {}
  for key, array in arrays.items():
    raw = idx_bytes(array)
    checksums[key] = hashlib.sha256(raw).hexdigest()
    name = dataset.IDX_FILES[key]
    if compress:
      with gzip.open(directory / (name + ".gz"), "wb", compresslevel=1) as f:
        f.write(raw)
    else:
      (directory / name).write_bytes(raw)
  return checksums


# The small dataset's splits: a few hundred examples, in the real format (IDX files and a tfds
# copy built from them by the package's own loaders). Only tests/test_realdata.py needs 70,000.
SMALL_TRAIN, SMALL_TEST = 480, 200


@pytest.fixture(scope="session")
def synthetic_tfds(tmp_path_factory):
  """A tfds data_dir holding fashion_mnist built offline from small synthetic IDX files."""
  root = tmp_path_factory.mktemp("synthetic")
  checksums = write_idx_dir(root / "idx", SMALL_TRAIN, SMALL_TEST)
  data_dir = str(root / "tfds")
  dataset.build_from_idx(data_dir, root / "idx", checksums)
  return {"data_dir": data_dir, "idx_dir": root / "idx", "checksums": checksums,
          "train_count": SMALL_TRAIN, "test_count": SMALL_TEST}


def _use_small_splits(monkeypatch) -> dict:
  splits = {"train": synthetic_arrays(200, seed=1), "val": synthetic_arrays(40, seed=3),
            "test": synthetic_arrays(75, seed=2)}
  from fmnist_jax import input_pipeline
  monkeypatch.setattr(input_pipeline, "load_splits",
                      lambda config: {k: v for k, v in splits.items()
                                      if k != "val" or config.data.validation_size})
  return splits


@pytest.fixture
def small_splits(monkeypatch):
  """Replaces the tfds loading with small in-memory splits (sizes not multiples of batches)."""
  return _use_small_splits(monkeypatch)


@pytest.fixture(scope="session")
def _trained_once(tmp_path_factory):
  with pytest.MonkeyPatch.context() as monkeypatch:
    _use_small_splits(monkeypatch)
    from fmnist_jax import train
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train.train_and_evaluate(tiny_config(run=dict(num_epochs=2)), str(workdir))
  return workdir


@pytest.fixture
def trained_workdir(small_splits, tmp_path, _trained_once):
  """A finished run of configs/tiny.py (2 epochs, 24 steps, on `small_splits`), trained once
  per test session; each test gets its own copy to read, damage or train on."""
  shutil.copytree(_trained_once, tmp_path / "run")
  return tmp_path / "run"


def tiny_config(changes: dict | None = None, **sections):
  """configs/tiny.py with {"section.field": value} `changes` and `sections` given as dicts,
  e.g. tiny_config({"optimizer.name": "sgd"}, run=dict(num_train_steps=3))."""
  from configs import default, tiny
  config = tiny.get_config()
  default.override(config, changes or {})
  config.update(sections)
  return config


def replicated_state(config, steps_per_epoch: int = 1, total_steps: int = 1):
  """The config's initial train state, replicated on the local devices (as the loop has it)."""
  from fmnist_jax import state
  from fmnist_jax.parallel import Parallelism
  return Parallelism("jit").replicate(state.initial_state(config, steps_per_epoch, total_steps))


# The tiers' slowest tests, named at the end of every run (beside --durations): what to shrink
# first when the default tier grows past its budget (docs/usage.md, "Tests").
_DURATIONS: dict[str, dict[str, float]] = {"default": {}, "slow": {}}


def pytest_runtest_logreport(report):
  tier = "slow" if "slow" in report.keywords else "default"
  durations = _DURATIONS[tier]
  durations[report.nodeid] = durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
  for tier, durations in _DURATIONS.items():
    if durations:
      name, seconds = max(durations.items(), key=lambda item: item[1])
      terminalreporter.write_line(
          f"{tier} tier: {len(durations)} tests, {sum(durations.values()):.0f} s in all "
          f"(summed over workers); slowest {name} ({seconds:.1f} s)")
