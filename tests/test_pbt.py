"""Population-based training: the exploit and explore, the lineage, resume and the refusals."""

import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from fmnist_jax import pbt, population, preemption, train
from fmnist_jax.errors import ConfigError
from fmnist_jax.parallel import Parallelism

MEMBERS = (("optimizer.learning_rate", (1e-2, 3e-3)), ("model.dropout_rates",
                                                       ((0.1, 0.1, 0.1), (0.3, 0.2, 0.0))))


def _config(**pbt_fields):
  return tiny_config(population=dict(members=MEMBERS), run=dict(num_epochs=3),
                     pbt=dict(dict(every_epochs=1, fraction=0.5), **pbt_fields))


def _state(config, scores, step=24):
  found = population.members(config)
  state = Parallelism("jit", member_shards=1).place_state(
      population.initial_state(config, found, 12, 36))
  state = state.replace(step=np.full(len(found), step, np.int32))
  # (members that differ in more than their first values: each its own parameters and moments)
  state = state.replace(opt_state=jax.tree.map(
      lambda x: x + np.arange(len(found)).reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
      if x.dtype.kind == "f" else x, state.opt_state))
  return found, state.replace(hparams=dict(state.hparams, score=np.array(scores, np.float32)))


def test_an_exploit_copies_a_top_members_whole_state_but_its_keys_and_explored_values():
  config = _config()
  found, state = _state(config, [0.5, 0.9, 0.1, 0.7])  # ranks: 1, 3 | 0, 2 (bottom)
  before = jax.device_get(state)
  after = jax.device_get(pbt.exploiter(config, found, 12)(state))
  parents = after.hparams["parent"]
  assert list(parents[[1, 3]]) == [-1, -1] and set(parents[[0, 2]]) <= {1, 3}
  assert list(after.hparams["parent_step"][[0, 2]]) == [24, 24]
  for member in range(4):
    source = parents[member] if parents[member] >= 0 else member
    for x, y in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params)):
      np.testing.assert_array_equal(x[member], y[source])
    copied = after.opt_state._replace(hyperparams={})
    for x, y in zip(jax.tree.leaves(copied), jax.tree.leaves(
        before.opt_state._replace(hyperparams={}))):
      np.testing.assert_array_equal(x[member], y[source])
    np.testing.assert_array_equal(after.dropout_key[member], before.dropout_key[member])
    rate = after.opt_state.hyperparams["learning_rate"][member]
    parent_rate = before.opt_state.hyperparams["learning_rate"][source]
    factors = (1.0,) if source == member else config.pbt.factors
    assert any(np.isclose(rate, parent_rate * f) for f in factors), (member, rate)


def test_explored_values_stay_in_their_range_and_the_compiled_largest():
  config = tiny_config(population=dict(members=(("augment.translate", (0, 2)),
                                                ("optimizer.label_smoothing", (0.1, 0.5)))),
                       pbt=dict(every_epochs=1, fraction=0.5, factors=(100.0,)))
  found, state = _state(config, [0.1, 0.2, 0.3, 0.4])
  after = jax.device_get(pbt.exploiter(config, found, 12)(state))
  assert list(after.hparams["translate"][:2]) == [2, 2]  # (copies of 2 or 0 x 100, at most 2)
  assert np.all(after.hparams["label_smoothing"][:2] == np.float32(0.99))


def test_a_resample_draws_from_the_populations_first_values():
  config = _config(resample_probability=1.0)
  found, state = _state(config, [0.1, 0.2, 0.3, 0.4])
  after = jax.device_get(pbt.exploiter(config, found, 12)(state))
  assert set(after.opt_state.hyperparams["learning_rate"][:2]) <= {np.float32(1e-2),
                                                                     np.float32(3e-3)}


def _rows(workdir):
  return [{k: v for k, v in json.loads(line).items() if k != "elapsed_seconds"}
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_pbt_run_names_parents_and_values_and_resumes_to_the_same_rows(small_splits,
                                                                         tmp_path):
  """The same seed gives the same lineage; a run preempted at an epoch's end (before the
  exploit that begins the next) and one mid-epoch (after it) resume to the same rows and
  parameters."""
  config = _config()
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  straight = _rows(tmp_path / "straight")
  assert len(straight) == 12 and any("parent" in row for row in straight)
  for row in straight:  # (a row's values are its member's now: a copy's are its parent's x f)
    assert row.get("parent_step", 12) in (12, 24)
  reached = preemption.PreemptionWatch.reached
  for at in (12, 14):  # (calls of 10 steps: 12 is the epoch's end, 14 is within the next)
    def preempted(watch, at=at):
      return reached(watch) or watch.calls == at
    preemption.PreemptionWatch.reached = preempted
    try:
      config = _config()
      config.parallelism.steps_per_call = 1
      with pytest.raises(preemption.Preempted):
        train.train_and_evaluate(config, str(tmp_path / f"run{at}"))
    finally:
      preemption.PreemptionWatch.reached = reached
    train.train_and_evaluate(config, str(tmp_path / f"run{at}"))
    if at == 12:
      train.train_and_evaluate(config, str(tmp_path / "once"))
      assert _rows(tmp_path / "once") == _rows(tmp_path / "run12")
    assert _rows(tmp_path / f"run{at}") == _rows(tmp_path / "once"), at


@pytest.mark.parametrize("change,named", [
    (dict(pbt=dict(every_epochs=1, fraction=0.7)), "must be in (0, 0.5]"),
    (dict(pbt=dict(every_epochs=1, factors=(0.8, 0.0))), "must be positive"),
    (dict(pbt=dict(every_epochs=1), data=dict(validation_size=0)), "validation_size > 0"),
    (dict(pbt=dict(every_epochs=1), population=dict(members=(("run.seed", (0, 1, 2, 3)),))),
     "nothing to explore"),
    (dict(pbt=dict(every_epochs=1, fraction=0.25),
          population=dict(members=(("optimizer.learning_rate", (1e-2, 3e-3)),))),
     "names no member to replace: use at least 4 members"),
    (dict(pbt=dict(every_epochs=-1)), "must be an integer >= 0"),
])
def test_pbt_settings_that_cannot_work_are_refused_in_one_line(change, named):
  config = tiny_config(**{"population": dict(members=MEMBERS), **change})
  with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace("]", r"\]")):
    pbt.check(config, population.members(config))


def test_pbt_that_never_exploits_is_a_warning():
  config = _config(every_epochs=3)
  assert "no member is ever replaced" in pbt.check(config, population.members(config))[0]


def test_a_replay_trains_one_model_with_a_members_schedule(small_splits, tmp_path):
  """Replay (Ray Tune's PopulationBasedTrainingReplay): a single run from scratch whose
  learning rate and dropout at every epoch are those the PBT member trained with."""
  train.train_and_evaluate(_config(), str(tmp_path / "pbt"))
  rows = _rows(tmp_path / "pbt")
  member = next(r["member"] for r in rows if "parent" in r)  # (one that was replaced)
  replay = tiny_config(run=dict(num_epochs=3), pbt=dict(replay=f"{tmp_path / 'pbt'}:{member}"))
  train.train_and_evaluate(replay, str(tmp_path / "replay"))
  mine = [r for r in rows if r["member"] == member]
  replayed = _rows(tmp_path / "replay")
  assert "member" not in replayed[0] and len(replayed) == len(mine) == 3
  for a, b in zip(replayed, mine):
    assert (a["learning_rate"], a["dropout_rates"]) == (b["learning_rate"], b["dropout_rates"])
  assert len({r["learning_rate"] for r in replayed}) > 1  # (the schedule changed it)


@pytest.mark.parametrize("replay,named", [
    ("nowhere", "must be WORKDIR:MEMBER"),
    ("{missing}:0", "has no config.json"),
    ("{sweep}:0", "is not a finished PBT run"),
    ("{pbt}:9", "has members 0 to 3, not 9"),
])
def test_a_replay_that_cannot_be_is_refused_in_one_line(small_splits, tmp_path, replay, named):
  folders = {"missing": tmp_path / "missing", "sweep": tmp_path / "sweep",
             "pbt": tmp_path / "pbt"}
  if "sweep" in replay:
    train.train_and_evaluate(_config(every_epochs=0), str(folders["sweep"]))
  if "pbt" in replay:
    train.train_and_evaluate(_config(), str(folders["pbt"]))
  config = tiny_config(pbt=dict(replay=replay.format(**folders)))
  with pytest.raises(ConfigError, match=named):
    pbt.replayed(config)


def test_the_report_of_a_pbt_run_shows_the_schedules_and_the_lineage(small_splits, tmp_path):
  from fmnist_jax import report
  train.train_and_evaluate(_config(), str(tmp_path))
  report.write_report(str(tmp_path))
  md = (tmp_path / "report" / "report.md").read_text()
  assert "![schedules](schedules.png)" in md and "--config.pbt.replay=" in md
  assert (tmp_path / "report" / "schedules.png").stat().st_size > 10_000


@pytest.mark.slow
def test_pmap_and_jit_on_8_devices_make_the_same_exploits_as_one_device(synthetic_tfds,
                                                                        tmp_path):
  """The exploit is one program on the member-stacked state however it is placed: jit on 8
  devices (members split over 4 device groups), pmap on 8 (without dropout, whose masks pmap
  draws per device) and jit on 1 give the same lineage and, to float rounding, the same
  rows."""
  import subprocess
  import sys
  from conftest import ROOT
  from test_parallel import _devices_env
  runs = {}
  for name, count, mode in (("jit1", 1, "jit"), ("jit8", 8, "jit"), ("pmap8", 8, "pmap")):
    members = repr((MEMBERS[0], ("optimizer.label_smoothing", (0.0, 0.2))))
    command = [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py",
               "--workdir", str(tmp_path / name), f"--config.data.tfds_dir="
               f"{synthetic_tfds['data_dir']}", f"--config.population.members={members}",
               "--config.pbt.every_epochs=1", "--config.pbt.fraction=0.5",
               "--config.run.num_epochs=3", "--config.run.batch_size=32",
               "--config.model.dropout_rates=(0.0, 0.0, 0.0)",
               f"--config.parallelism.mode={mode}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=_devices_env(count))
    assert done.returncode == 0, done.stderr[-3000:]
    runs[name] = _rows(tmp_path / name)
  lineage = {name: [(r["member"], r.get("parent")) for r in rows] for name, rows in runs.items()}
  assert lineage["jit1"] == lineage["jit8"] == lineage["pmap8"]
  assert any(parent is not None for _, parent in lineage["jit1"])
  for name in ("jit8", "pmap8"):
    for a, b in zip(runs[name], runs["jit1"]):
      assert a["learning_rate"] == b["learning_rate"]
      assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=0.03)


@pytest.mark.slow
def test_a_pbt_run_killed_and_rerun_ends_as_one_never_killed(synthetic_tfds, tmp_path):
  """kill -9 after the first epoch's checkpoint (its scores saved, the exploit that begins the
  next epoch not yet made), then the same command: the same rows and parameters, bit for
  bit."""
  import subprocess
  import sys
  from conftest import ROOT
  from fmnist_jax import checkpointing
  from test_population import kill_after_first_checkpoint
  command = [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py",
             f"--config.data.tfds_dir={synthetic_tfds['data_dir']}",
             f"--config.population.members={MEMBERS!r}", "--config.pbt.every_epochs=1",
             "--config.pbt.fraction=0.5", "--config.run.num_epochs=3",
             "--config.checkpoints.every_steps=0"]
  straight = subprocess.run([*command, "--workdir", str(tmp_path / "straight")], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
  assert straight.returncode == 0, straight.stderr[-3000:]
  kill_after_first_checkpoint(command, tmp_path / "killed")
  checkpoints = tmp_path / "killed" / "checkpoints"
  assert checkpointing.complete_steps(checkpoints) == [27]  # (epoch 1 of 27 steps)
  rerun = subprocess.run([*command, "--workdir", str(tmp_path / "killed")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert _rows(tmp_path / "killed") == _rows(tmp_path / "straight")
  assert any("parent" in row for row in _rows(tmp_path / "straight"))
  config = tiny_config(population=dict(members=MEMBERS), pbt=dict(every_epochs=1))
  found = population.members(config)
  states = []
  for run in ("straight", "killed"):
    ckpt = checkpointing.Checkpointer(tmp_path / run / "checkpoints", config, read_only=True)
    target = Parallelism("jit", member_shards=1).place_state(
        population.initial_state(config, found, 27, 81))
    states.append(ckpt.restore(81, target)[0])
    ckpt.close()
  for x, y in zip(*(jax.tree.leaves(s) for s in states)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
