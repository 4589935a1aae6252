"""A few steps on the real Fashion-MNIST, when it is available (`make test` prepares it)."""

import pytest

from configs import default
from fmnist_jax import dataset, train


def _real_data_dir():
  data_dir = dataset.default_data_dir()
  if dataset.is_prepared(data_dir):
    return data_dir
  if dataset.find_idx_dir() is None:
    pytest.skip("real Fashion-MNIST not available (install dataset-fashion-mnist)")
  return dataset.prepare(data_dir)


@pytest.mark.realdata
def test_a_few_steps_on_the_real_data_learn_and_count_every_example(tmp_path):
  config = default.get_config()
  config.data.tfds_dir = _real_data_dir()
  config.run.num_train_steps = 60
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["test_count"] == 10_000 and result["val_count"] == 5_000
  assert result["test_accuracy"] > 0.4  # chance is 0.1
  assert result["train_loss"] < 2.0


@pytest.mark.realdata
def test_the_real_idx_files_match_the_known_checksums():
  if dataset.find_idx_dir() is None:
    pytest.skip("real Fashion-MNIST IDX files not available")
  images, labels = dataset.read_idx_splits()["test"]
  assert images.shape == (10_000, 28, 28, 1)
  assert sorted(set(labels.tolist())) == list(range(10))
