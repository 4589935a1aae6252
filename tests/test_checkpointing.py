import json
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import replicated_state, tiny_config
from fmnist_jax import checkpointing, population, state as state_lib, steps, train
from fmnist_jax.parallel import Parallelism


def _state(config, seed=0):
  config.run.seed = seed
  return replicated_state(config, 10, 100)


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_then_restore_gives_the_identical_state(tmp_path):
  config = tiny_config(checkpoints=dict(asynchronous=True))
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
  config = tiny_config(checkpoints=dict(keep=2, keep_best=1))
  state = _state(config)
  ckpt = checkpointing.Checkpointer(tmp_path, config)
  for step, val_accuracy in [(10, 0.5), (20, 0.9), (30, 0.6), (40, 0.7), (50, 0.65)]:
    ckpt.save(step, state, metrics={"val_accuracy": val_accuracy})
  ckpt.save(55, state)  # a periodic save without metrics counts towards the latest N
  ckpt.close()
  assert checkpointing.complete_steps(tmp_path) == [20, 50, 55]


FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "single_run_v1"


def test_a_single_run_workdir_from_before_one_path_resumes_where_it_stopped(small_splits,
                                                                           tmp_path):
  # The fixture: configs/tiny.py stopped at step 7 (mid-epoch) by the code of commit bbe9db0,
  # before a single run became a population of one; params_at_step_20.npz: that code's
  # straight run to step 20 (tests/fixtures/README.md says how both were made).
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE / "workdir", workdir)
  saved = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "7" / "default")
  config = tiny_config(run=dict(num_train_steps=20))
  train.train_and_evaluate(config, str(workdir))
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [json.loads(l)["start_step"] for l in
          (workdir / "run_info.jsonl").read_text().splitlines()] == [0, 7]
  assert "member" not in rows[-1] and rows[-1]["step"] == 20
  # What it writes now is still a single run's checkpoint: the seed's shapes, read by plain
  # Orbax, equal to the straight run of the old code (to float rounding: the stored numbers
  # may come from another CPU kind).
  now = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "20" / "default")
  initial = state_lib.initial_state(config).params
  assert jax.tree.map(np.shape, now["params"]) == jax.tree.map(np.shape, initial)
  assert jax.tree.map(np.shape, saved["params"]) == jax.tree.map(np.shape, initial)
  assert "hparams" not in now and np.shape(now["step"]) == ()
  expected = np.load(FIXTURE / "params_at_step_20.npz")
  got = {jax.tree_util.keystr(p): x
         for p, x in jax.tree_util.tree_flatten_with_path(now["params"])[0]}
  assert sorted(got) == sorted(expected.files)
  for name in expected.files:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-7)


def test_the_restored_state_is_the_checkpoints_arrays_bit_for_bit(tmp_path):
  shutil.copytree(FIXTURE / "workdir", tmp_path / "run")
  directory = tmp_path / "run" / "checkpoints"
  saved = ocp.StandardCheckpointer().restore(directory / "7" / "default")
  config = tiny_config(run=dict(num_train_steps=20))
  found = population.members(config)
  state = Parallelism("jit").place_state(population.initial_state(config, found, 27, 20))
  ckpt = checkpointing.Checkpointer(directory, config)
  state, extras = ckpt.restore(7, state)
  ckpt.close()
  assert np.asarray(state.step).tolist() == [7]  # the member axis, as the loop holds it
  for a, b in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b)[0])
  for a, b in zip(jax.tree.leaves(saved["opt_state"]), jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(a, np.asarray(b)[0])
  assert extras["epoch_sums"]["count"].tolist() == [saved["epoch_sums"]["count"].tolist()]


def test_a_recorded_config_reads_over_todays_defaults(tmp_path, caplog):
  # A workdir's config.json from before a field existed reads that field's default, so no
  # reader restates a default; a field that is gone is named once and left out.
  recorded = json.loads((FIXTURE / "workdir" / "config.json").read_text())
  del recorded["augment_flip_alternate"], recorded["eval_translate"]  # (flat: before sections)
  recorded["an_old_field"] = 3
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  from fmnist_jax import workdir as workdir_lib
  config = workdir_lib.read_config(tmp_path)
  assert config.augment.flip == "off" and config.eval.tta_translate == 0
  assert config.run.batch_size == 16  # as recorded
  assert tuple(config.model.conv_features) == (4, 8, 8)
  assert "an_old_field" not in config and "an_old_field" in caplog.text
  assert workdir_lib.config_changes(tmp_path, tiny_config(run=dict(num_train_steps=7))) == {}


@pytest.mark.parametrize("flip, alternate, mode", [
    (False, False, "off"), (True, False, "random"), (True, True, "alternate")])
def test_a_flat_config_from_before_the_sections_reads_as_its_paths(flip, alternate, mode):
  # population_v1's config.json was written with flat names: each is read at its path, the
  # two flip flags as augment.flip's mode, the population's fields by their paths.
  from fmnist_jax import workdir as workdir_lib
  recorded = json.loads((FIXTURE.parent / "population_v1" / "workdir" / "config.json")
                        .read_text())
  recorded.update(augment_flip=flip, augment_flip_alternate=alternate, eval_flip_average=True,
                  members_per_pass=2, optimizer="sgd",
                  population=[["seed", [0, 1]], ["augment_flip", [False, True]]])
  config = workdir_lib.layered(recorded)
  assert config.augment.flip == mode and config.eval.tta_flip is True
  assert (config.run.batch_size, config.checkpoints.every_steps, config.optimizer.name,
          config.population.per_pass, config.data.validation_size) == (16, 5, "sgd", 2, 40)
  assert [(path, tuple(values)) for path, values in config.population.members] == [
      ("run.seed", (0, 1)), ("augment.flip", ("off", "alternate" if alternate else "random"))]


def test_workdirs_from_before_the_sections_report_and_compare(small_splits, tmp_path):
  # Both fixtures recorded flat config.json files: the report and compare read them as paths.
  from fmnist_jax import compare, report
  for name in ("population_v1", "single_run_v1"):
    shutil.copytree(FIXTURE.parent / name / "workdir", tmp_path / name)
  report.write_report(str(tmp_path / "population_v1"))
  numbers = json.loads((tmp_path / "population_v1" / "report" / "metrics.json").read_text())
  assert [(m["member"], m["seed"]) for m in numbers["members"]] == [(0, 0), (1, 1)]
  out = compare.compare([str(tmp_path / "population_v1"), str(tmp_path / "single_run_v1")],
                        str(tmp_path / "compared"))
  table = (out / "compare.md").read_text()
  assert "| single_run_v1 |" in table and "| population_v1/m1 (seed=1) |" in table


def test_a_recorded_config_of_the_wrong_kind_is_one_line(tmp_path):
  recorded = json.loads((FIXTURE / "workdir" / "config.json").read_text())
  recorded["batch_size"] = "sixteen"
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  from fmnist_jax import workdir as workdir_lib
  from fmnist_jax.errors import ConfigError
  with pytest.raises(ConfigError, match=r"batch_size='sixteen' is not of the kind of "
                                        r"configs/default.py's 128 \(int\)"):
    workdir_lib.read_config(tmp_path)


def test_a_population_workdir_from_before_one_path_resumes(small_splits, tmp_path):
  # tests/fixtures/population_v1: configs/tiny.py with population seeds (0, 1), stopped at
  # step 7 by commit bbe9db0's code (its members' optimizer states hold their learning rates).
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE.parent / "population_v1" / "workdir", workdir)
  saved = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "7" / "default")
  config = tiny_config(run=dict(num_train_steps=14),
                       population=dict(members=(("run.seed", (0, 1)),)))
  state = Parallelism("jit").place_state(
      population.initial_state(config, population.members(config), 27, 14))
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", config)
  state, _ = ckpt.restore(7, state)
  ckpt.close()
  for a, b in zip(jax.tree.leaves(saved["opt_state"]), jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(a, np.asarray(b))
  train.train_and_evaluate(config, str(workdir))
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["member"]) for r in rows[-2:]] == [(14, 0), (14, 1)]
