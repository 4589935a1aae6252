import jax
import numpy as np

from conftest import replicated_state, tiny_config
from fmnist_jax import checkpointing, steps


def _state(config, seed=0):
  config.seed = seed
  return replicated_state(config, 10, 100)


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_then_restore_gives_the_identical_state(tmp_path):
  config = tiny_config(async_checkpointing=True)
  state = _state(config)
  batch = {"image": np.full((16, 28, 28, 1), 128, np.uint8), "label": np.arange(16) % 10}
  state, _ = jax.jit(steps.train_step)(state, batch)  # non-trivial optimizer state
  ckpt = checkpointing.Checkpointer(tmp_path, config)
  ckpt.save(1, state)
  ckpt.close()

  fresh = _state(config, seed=99)
  restored, extras = checkpointing.Checkpointer(tmp_path, config).restore_latest(fresh)
  assert extras == {}  # saved without epoch sums
  assert int(restored.step) == 1
  _assert_same(restored.params, state.params)
  _assert_same(restored.opt_state, state.opt_state)
  _assert_same(restored.dropout_key, state.dropout_key)


def test_keeps_the_latest_n_plus_the_best_by_validation_accuracy(tmp_path):
  config = tiny_config(keep_checkpoints=2, keep_best_checkpoints=1)
  state = _state(config)
  ckpt = checkpointing.Checkpointer(tmp_path, config)
  for step, val_accuracy in [(10, 0.5), (20, 0.9), (30, 0.6), (40, 0.7), (50, 0.65)]:
    ckpt.save(step, state, metrics={"val_accuracy": val_accuracy})
  ckpt.save(55, state)  # a periodic save without metrics counts towards the latest N
  ckpt.close()
  assert checkpointing.complete_steps(tmp_path) == [20, 50, 55]
