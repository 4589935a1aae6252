"""Populations: many models in one compiled program, each member its own single run."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, tiny_config
from fmnist_jax import checkpointing, config_file, population, preemption, steps, train
from fmnist_jax import errors
from fmnist_jax.errors import ConfigError
from fmnist_jax.parallel import Parallelism


def _rows(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def test_members_are_the_product_of_the_values_in_the_order_written():
  config = tiny_config(population=dict(members=(("model.dropout_rates",
                                                 ((0.25, 0.4, 0.3), (0.0, 0.0, 0.0))),
                                   ("run.seed", (0, 1, 2)))))
  found = population.check(config)
  assert [(m["model.dropout_rates"][0], m["run.seed"]) for m in found] == [
      (0.25, 0), (0.25, 1), (0.25, 2), (0.0, 0), (0.0, 1), (0.0, 2)]
  single = population.member_config(config, found[4])
  assert single.run.seed == 1 and tuple(single.model.dropout_rates) == (0.0, 0.0, 0.0)
  assert single.population.members == () and population.check(tiny_config()) == [{}]  # one member


@pytest.mark.parametrize("value, says", [
    ((("run.batch_size", (16, 32)),), "changes the program or its shapes"),
    ((("sead", (0, 1)),), "is not a config field"),
    ((("optimizer.learning_rat", (1e-3,)),), "did you mean 'optimizer.learning_rate'?"),
    ((("augment.learning_rate", (1e-3,)),), "did you mean 'optimizer.learning_rate'?"),
    ((("run.seed", ()),), "must be a non-empty tuple"),
    ((("optimizer.learning_rate", ("fast",)),), "is not a float"),
    ((("model.dropout_rates", ((0.1, 0.2),)),), "is not a tuple"),
    ((("optimizer.learning_rate", (1e-3, -1.0)),),
     "value optimizer.learning_rate=-1.0: optimizer.learning_rate=-1.0 must"),
    ((("run.seed", (0,)), ("run.seed", (1,))), "named twice"),
    ((("run.seed", (0, 0)),), "gives 0 twice"),
    ((("run.seed", (0, 1)), ("optimizer.learning_rate", (1e-3,))), "per_pass=3 is more than "
                                                                   "the population's 2 members"),
    ((("optimizer.learning_rate", (1e-5, 0.00001)),), "gives 1e-05 twice"),
    ((("model.dropout_rates", ((0.1, 0.1, 0.1), [0.1, 0.1, 0.1])),), "twice"),
    ((("run.seed", (2 ** 40,)),), "[0, 2**31)"),
    ((("augment.flip", ("random", "alternate")),), "'random' or 'alternate', not both"),
    ((("augment.flip", ("off", "sometimes")),), "is not a str like the config's 'off'"),
    (("run.seed",), "must be (path, values) pairs"),
    ((("learning_rate", (1e-3,)),), "learning_rate is now optimizer.learning_rate"),
])
def test_a_bad_population_is_one_line_before_any_data_is_read(tmp_path, value, says):
  with pytest.raises(ConfigError) as raised:
    per_pass = 3 if "per_pass" in says else 0
    train.setup(tiny_config(population=dict(members=value, per_pass=per_pass)),
                str(tmp_path / "run"))
  assert says in str(raised.value) and "\n" not in str(raised.value)
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_population_too_large_for_memory_says_how_many_fit(small_splits, tmp_path,
                                                            monkeypatch):
  from fmnist_jax import hardware
  monkeypatch.setattr(hardware, "device_memory_bytes", lambda device: 2 ** 30)  # 1 GiB
  config = tiny_config(population=dict(members=(("run.seed", tuple(range(100_000))),)))
  with pytest.raises(ConfigError) as raised:
    train.setup(config, str(tmp_path / "run"))
  message = str(raised.value)
  assert "a population of 100000 members needs about" in message and "\n" not in message
  fit = int(message.split("at most about ")[1].split()[0])
  assert 1000 < fit < 100_000 and not (tmp_path / "run").exists()
  monkeypatch.setattr(hardware, "device_memory_bytes", lambda device: 2 ** 40)
  config.run.num_train_steps = 1
  run = train.setup(config, str(tmp_path / "run2"))
  run.lock.release()
  assert run.members[-1] == {"run.seed": 99_999}


def test_tfds_streaming_cannot_feed_a_population(tmp_path):
  config = tiny_config(data=dict(input_mode="tfds"),
                       population=dict(members=(("run.seed", (0, 1)),)))
  with pytest.raises(ConfigError, match="input_mode='device'") as raised:
    train.setup(config, str(tmp_path / "run"))
  assert "\n" not in str(raised.value) and not (tmp_path / "run").exists()


# Each pair of fields, 2 values each: 4 members against 4 single runs of `main`'s loop.
SWEEPS = {
    "dropout_study": ({}, (("model.dropout_rates", ((0.25, 0.4, 0.3), (0.0, 0.0, 0.0))),
                           ("run.seed", (0, 1)))),
    "lr_smoothing_schedule": ({"optimizer.schedule": "warmup_cosine",
                               "optimizer.warmup_epochs": 0.1},
                              (("optimizer.learning_rate", (1e-3, 3e-3)),
                               ("optimizer.label_smoothing", (0.0, 0.1)))),
    "ema_translate": ({}, (("optimizer.ema_decay", (0.0, 0.9)), ("augment.translate", (0, 2)))),
    "adamw_flip_erase": ({"optimizer.name": "adamw", "augment.erase_size": 6},
                         (("optimizer.weight_decay", (0.0, 0.05)),
                          ("augment.flip", ("off", "random")),
                          ("augment.erase_prob", (0.0, 0.5)))),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if i else [])
                                  for i, name in enumerate(SWEEPS)])  # one in the default tier
def test_every_member_is_its_single_run(small_splits, tmp_path, name):
  """After a few steps a member's evaluation equals `main` run alone with its fields: the
  first member and the last (every field at its second value) of each sweep."""
  base, pairs = SWEEPS[name]
  config = tiny_config(base, run=dict(num_train_steps=3), parallelism=dict(steps_per_call=2),
                       population=dict(members=pairs))
  train.train_and_evaluate(config, str(tmp_path / "population"))
  rows = {row["member"]: row for row in _rows(tmp_path / "population")}
  found = population.members(config)
  for index in (0, len(found) - 1):
    single = population.member_config(config, found[index])
    alone = train.train_and_evaluate(single, str(tmp_path / f"single{index}"))
    for key in ("test_loss", "val_loss", "train_loss"):
      np.testing.assert_allclose(rows[index][key], alone[key], rtol=1e-5, err_msg=key)
    assert rows[index]["test_accuracy"] == alone["test_accuracy"]


STUDY = "(('model.dropout_rates', ((0.25, 0.4, 0.3), (0.0, 0.0, 0.0))), ('run.seed', (0, 1)))"


def _main(workdir, *flags, env=None):
  return [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py",
          "--workdir", str(workdir), f"--config.population.members={STUDY}", *flags]


def _stacked(workdir, config, step=None):
  """The latest (or `step`'s) checkpoint's stacked state."""
  found = population.members(config)
  target = Parallelism("jit", member_shards=1).place_state(
      population.initial_state(config, found, 1, 1))
  ckpt = checkpointing.Checkpointer(pathlib.Path(workdir) / "checkpoints", config,
                                    read_only=True)
  try:
    return (ckpt.restore_latest(target) if step is None else ckpt.restore(step, target))[0]
  finally:
    ckpt.close()


@pytest.mark.slow
def test_sigkill_of_a_population_then_rerun_is_bit_identical(synthetic_tfds, tmp_path):
  flags = (f"--config.data.tfds_dir={synthetic_tfds['data_dir']}",
           "--config.run.num_train_steps=40",
           "--config.checkpoints.every_steps=10", "--config.parallelism.steps_per_call=1")
  straight = subprocess.run(_main(tmp_path / "straight", *flags), cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
  assert straight.returncode == 0, straight.stderr[-3000:]
  process = subprocess.Popen(_main(tmp_path / "killed", *flags), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, preemption.PAUSE_VARIABLE: "300"})
  checkpoints = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None and not (
      checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    time.sleep(0.05)
  assert process.poll() is None, "the run ended before it could be killed"
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  config = tiny_config(population=dict(members=eval(STUDY)))  # pylint: disable=eval-used
  assert 0 < int(np.ravel(_stacked(tmp_path / "killed", config).step)[0]) < 40
  rerun = subprocess.run(_main(tmp_path / "killed", *flags), cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  a, b = _stacked(tmp_path / "straight", config), _stacked(tmp_path / "killed", config)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert _rows(tmp_path / "straight")[-4:] == [
      {**row, "elapsed_seconds": s["elapsed_seconds"]}
      for row, s in zip(_rows(tmp_path / "killed")[-4:], _rows(tmp_path / "straight")[-4:])]


def kill_after_first_checkpoint(command: list[str], workdir) -> None:
  """Runs `command --workdir WORKDIR`, paused after its first checkpoint, and kills it (-9)
  there."""
  process = subprocess.Popen([*command, "--workdir", str(workdir)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, preemption.PAUSE_VARIABLE: "300"})
  checkpoints = pathlib.Path(workdir) / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None and not (
      checkpoints.is_dir() and checkpointing.complete_steps(checkpoints)):
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)


@pytest.mark.slow
def test_a_member_stopped_before_a_kill_stays_stopped_after_the_rerun(synthetic_tfds, tmp_path):
  """stop_at_accuracy per member is in the checkpoint: member 0 reaches it at epoch 1 and the
  run is killed -9 after that epoch's checkpoint; the rerun keeps member 0 stopped, its
  parameters as they were, and ends bit-identical to a run without the kill."""
  pairs = "(('optimizer.learning_rate', (1e-2, 1e-5)),)"
  command = [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py",
             f"--config.data.tfds_dir={synthetic_tfds['data_dir']}",
             f"--config.population.members={pairs}",
             "--config.eval.stop_at_accuracy=0.2", "--config.run.num_epochs=3",
             "--config.checkpoints.every_steps=0", "--config.model.dropout_rates=(0.0, 0.0, 0.0)"]
  config = tiny_config(population=dict(members=eval(pairs)), run=dict(num_epochs=3),
                       model=dict(dropout_rates=(0.0, 0.0, 0.0)))
  straight = subprocess.run([*command, "--workdir", str(tmp_path / "straight")], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
  assert straight.returncode == 0, straight.stderr[-3000:]
  first = {r["member"]: r["val_accuracy"] for r in _rows(tmp_path / "straight")[:2]}
  assert first[0] >= 0.2 > first[1]  # member 0 stopped at epoch 1, member 1 trains on
  kill_after_first_checkpoint(command, tmp_path / "killed")
  killed = _stacked(tmp_path / "killed", config)
  assert int(np.ravel(killed.step)[0]) == 27  # the end of epoch 1: 27 steps of 16
  assert list(np.asarray(killed.hparams["status"])) == [steps.REACHED, steps.TRAINING]
  rerun = subprocess.run([*command, "--workdir", str(tmp_path / "killed")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  a, b = _stacked(tmp_path / "straight", config), _stacked(tmp_path / "killed", config)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for x, y in zip(jax.tree.leaves(killed.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x)[0], np.asarray(y)[0])  # member 0: as stopped
  without_time = [{**r, "elapsed_seconds": 0} for r in _rows(tmp_path / "straight")]
  assert [{**r, "elapsed_seconds": 0} for r in _rows(tmp_path / "killed")] == without_time


def test_a_population_checkpoint_saved_without_its_hparams_still_restores(tmp_path):
  """Checkpoints written before the members' values and stop flags were saved restore with
  every member training, as they did."""
  config = tiny_config(population=dict(members=(("optimizer.learning_rate", (1e-2, 1e-3)),)))
  found = population.members(config)
  state = Parallelism("jit", member_shards=1).place_state(
      population.initial_state(config, found, 1, 1))
  ckpt = checkpointing.Checkpointer(tmp_path, config)
  tree = {k: v for k, v in checkpointing._on_disk(state).items() if k != "hparams"}
  ckpt.manager.save(0, args=ocp.args.StandardSave(tree))  # (as written before)
  ckpt.close()
  ckpt = checkpointing.Checkpointer(tmp_path, config, read_only=True)
  stopped = state.replace(hparams=dict(state.hparams, status=np.ones(2, np.int32)))
  restored, _ = ckpt.restore_latest(stopped)
  ckpt.close()
  assert list(np.asarray(restored.hparams["status"])) == [1, 1]  # (the target's own)
  for x, y in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_with_another_population_is_refused_and_harms_nothing(small_splits, tmp_path):
  config = tiny_config(run=dict(num_train_steps=4),
                       population=dict(members=(("run.seed", (0, 1)),)))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  (tmp_path / "run" / "result.json").unlink()  # (killed after its last checkpoint)
  train.train_and_evaluate(config, str(tmp_path / "run"))  # already finished: rebuilt
  rebuilt = json.loads((tmp_path / "run" / "result.json").read_text())
  assert rebuilt["rebuilt"] and rebuilt["final"]["test_accuracy"] == pytest.approx(
      np.mean([r["test_accuracy"] for r in _rows(tmp_path / "run")[-2:]]))
  before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()
            and p.name != ".lock"}
  with pytest.raises(ConfigError, match="another population") as raised:
    train.train_and_evaluate(tiny_config(run=dict(num_train_steps=8),
                                         population=dict(members=(("run.seed", (0, 1, 2)),))),
                             str(tmp_path / "run"))
  assert "\n" not in str(raised.value)
  assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")
                    if p.is_file() and p.name != ".lock"}


def test_stopped_members_keep_their_state_and_the_run_ends_when_all_have(small_splits,
                                                                         tmp_path):
  """stop_at_accuracy per member: one member reaches it (its state then stays), the run ends
  when every member has."""
  config = tiny_config(run=dict(num_epochs=8), model=dict(dropout_rates=(0.0, 0.0, 0.0)),
                       eval=dict(stop_at_accuracy=0.5, stop_metric="test_accuracy"),
                       population=dict(members=(("optimizer.learning_rate", (1e-2, 3e-3)),)))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  rows = _rows(tmp_path / "run")
  first = {m: min(r["epoch"] for r in rows if r["member"] == m and r["test_accuracy"] >= 0.5)
           for m in (0, 1)}
  assert first[0] < first[1], first  # the faster member stopped first ...
  frozen = [r for r in rows if r["member"] == 0 and r["epoch"] >= first[0]]
  assert len(frozen) > 1 and len({(r["test_loss"], r["test_accuracy"]) for r in frozen}) == 1
  assert max(r["epoch"] for r in rows) == first[1]  # ... and the run ended with the last
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["stop_reason"] == "target_reached"
  assert [m["member"] for m in result["population"]["members"]] == [0, 1]


EIGHT_DEVICES = """
import json, sys
sys.path.insert(0, "tests")
from conftest import tiny_config, synthetic_arrays
from fmnist_jax import input_pipeline, train
splits = {"train": synthetic_arrays(200, seed=1), "val": synthetic_arrays(40, seed=3),
          "test": synthetic_arrays(75, seed=2)}
input_pipeline.load_splits = lambda config: splits
config = tiny_config(run=dict(num_train_steps=6), parallelism=dict(steps_per_call=2),
                     population=dict(members=%s))
run = train.setup(config, sys.argv[1])
run.lock.release()
print(json.dumps({"mesh": dict(run.par.mesh.shape)}))
train.train_and_evaluate(config, sys.argv[1])
"""


@pytest.mark.slow
def test_a_population_on_8_devices_splits_members_and_equals_1_device(small_splits, tmp_path):
  config = tiny_config(run=dict(num_train_steps=6), parallelism=dict(steps_per_call=2),
                       population=dict(members=eval(STUDY)))
  train.train_and_evaluate(config, str(tmp_path / "one"))
  env = {**__import__("os").environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  result = subprocess.run([sys.executable, "-c", EIGHT_DEVICES % STUDY, str(tmp_path / "eight")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.splitlines()[0])["mesh"] == {"members": 4, "data": 2}
  for one, eight in zip(_rows(tmp_path / "one"), _rows(tmp_path / "eight"), strict=True):
    assert one["member"] == eight["member"]
    np.testing.assert_allclose(eight["test_loss"], one["test_loss"], rtol=1e-5)
    assert eight["test_accuracy"] == one["test_accuracy"]


PMAP_AND_JIT = """
import json, sys
sys.path.insert(0, "tests")
from conftest import tiny_config, synthetic_arrays
from fmnist_jax import input_pipeline, train
splits = {"train": synthetic_arrays(200, seed=1), "val": synthetic_arrays(40, seed=3),
          "test": synthetic_arrays(75, seed=2)}
input_pipeline.load_splits = lambda config: splits
for mode in ("jit", "pmap"):
  config = tiny_config(run=dict(num_train_steps=6),
                       parallelism=dict(steps_per_call=2, mode=mode),
                       model=dict(dropout_rates=(0.0, 0.0, 0.0)), population=dict(members=%s))
  train.train_and_evaluate(config, sys.argv[1] + "/" + mode)
"""


@pytest.mark.slow
def test_a_population_under_pmap_equals_jit_on_8_devices(tmp_path):
  """pmap (every device: every member, an eighth of each member's batch) against jit (a
  (members, data) mesh), dropout off: the same rows."""
  pairs = (("optimizer.learning_rate", (1e-3, 3e-3)), ("run.seed", (0, 1)))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  result = subprocess.run([sys.executable, "-c", PMAP_AND_JIT % (pairs,), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  jit_rows, pmap_rows = _rows(tmp_path / "jit"), _rows(tmp_path / "pmap")
  assert len(jit_rows) == 4
  for a, b in zip(jit_rows, pmap_rows, strict=True):
    assert a["member"] == b["member"] and a["test_accuracy"] == b["test_accuracy"]
    for key in ("test_loss", "val_loss", "train_loss"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)


def test_the_report_of_a_population_gives_members_settings_and_ensembles_apart(small_splits,
                                                                               tmp_path):
  config = tiny_config(run=dict(num_train_steps=12),
                       population=dict(members=eval(STUDY)))  # pylint: disable=eval-used
  train.train_and_evaluate(config, str(tmp_path / "run"))
  from fmnist_jax import report
  report.write_report(str(tmp_path / "run"), splits=small_splits)
  numbers = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
  rows = {row["member"]: row for row in _rows(tmp_path / "run")}
  assert [m["member"] for m in numbers["members"]] == [0, 1, 2, 3]
  for member in numbers["members"]:  # the report's own evaluation agrees with the loop's
    assert member["test_accuracy"] == pytest.approx(rows[member["member"]]["test_accuracy"])
    assert member["test_loss"] == pytest.approx(rows[member["member"]]["test_loss"], rel=1e-4)
  settings = numbers["settings"]
  assert sorted(s["members"] for s in settings.values()) == [2, 2]
  for name, summary in settings.items():
    accuracies = [m["test_accuracy"] for m in numbers["members"] if m["setting"] == name]
    assert summary["test_accuracy"][0] == pytest.approx(np.mean(accuracies))
    assert summary["test_accuracy"][1] == pytest.approx(np.std(accuracies, ddof=1))
  assert set(numbers["ensembles"]) == set(settings)
  # The seed's analysis for the ensemble of all members and for each setting's, at each
  # member's best checkpoint by validation and at the last.
  out, count = tmp_path / "run" / "report", len(small_splits["test"][1])
  assert list(numbers["groups"]) == ["ensemble of the members", *(
      f"ensemble of {name}" for name in settings)]
  for group in numbers["groups"].values():
    assert set(group) == {"best", "last"} and group["last"]["members"] in (2, 4)
    for analysis in group.values():
      assert np.sum(analysis["confusion_matrix"]) == analysis["count"] == count
      assert all((out / name).stat().st_size > 1000 for name in analysis["figures"].values())
  assert numbers["checkpoints"] == numbers["groups"]["ensemble of the members"]
  text = (out / "report.md").read_text()
  for heading in ("## Test evaluation", "## Correct vs misclassified", "## Members",
                  "### Ensemble of the members: ", "### Ensemble of dropout_rates="):
    assert heading in text, heading
  assert all((out / f"{name}.png").stat().st_size > 1000 for name in ("curves", "correct"))
  from fmnist_jax import compare
  compare.compare([str(tmp_path / "run")], str(tmp_path / "compare"))
  compared = json.loads((tmp_path / "compare" / "compare.json").read_text())
  names = list(compared)  # a run per member, named with the values it varies
  assert [n.split(" ")[0] for n in names] == ["run/m0", "run/m1", "run/m2", "run/m3"]
  assert names[0] == "run/m0 (dropout_rates=[0.25, 0.4, 0.3] seed=0)"
  for index, member in enumerate(numbers["members"]):
    assert compared[names[index]]["last_checkpoint_test_ece"] == member["ece"]
    assert compared[names[index]]["final_test_accuracy"] == rows[index]["test_accuracy"]



def test_the_fields_a_population_may_vary_are_declared_once():
  # steps.STEP_FIELDS is the one list: every step option a member may vary is declared there,
  # each names a config field, and population.VARYING is built from it. (A distillation's
  # options are the run's: its students share one teacher.)
  config = tiny_config()
  options = {f.name for f in dataclasses.fields(steps.StepOptions)} - {
      "microbatches", "varying", "keep_stopped", "stop_nonfinite", "distill", "distill_weight",
      "temperature", "teacher"}
  assert options <= set(steps.STEP_FIELDS)
  assert all(path in config_file.paths(config) for path in steps.STEP_FIELDS.values())
  assert set(population.VARYING) == {"run.seed", *population.IN_OPTIMIZER,
                                     *steps.STEP_FIELDS.values()}
  found = population.check(tiny_config(population=dict(members=(("augment.translate", (0, 2)),))))
  step = population.step_options(config, found, steps.StepOptions())
  assert (step.translate, step.varying) == (2, ("translate",))


def test_the_console_says_how_many_members_train_and_that_its_figures_are_means():
  found = population.members(tiny_config(population=dict(
      members=(("optimizer.learning_rate", (1e-3, 3e-3)), ("run.seed", (0, 1, 2))))))
  (line,) = population.console_lines(found, (np.zeros(6, np.int32),) * 2)
  assert line.startswith("6 members train as one program (2 learning_rate, 3 seed)")
  assert "give the mean of those that did not diverge" in line
  assert population.console_lines([{}], (np.zeros(1, np.int32),) * 2) == []


def test_a_population_whose_batches_do_not_fit_is_refused_before_the_data(tmp_path,
                                                                          monkeypatch):
  """The fourth adversarial pass's 2,000 members (seeds x2, three fields x10) at batch 512: each
  member's batches (this call's and the next's) are 8 MB, 16.8 GB in all; with 16 GiB it is
  refused, naming how many fit. (The states alone, all the check counted before, are 72 MB.)"""
  from fmnist_jax import hardware
  monkeypatch.setattr(hardware, "device_memory_bytes", lambda device: 16 * 2 ** 30)
  tenfold = tuple(0.01 * (i + 1) for i in range(10))
  config = tiny_config(run=dict(batch_size=512), optimizer=dict(name="adamw"),
                       population=dict(members=(
      ("run.seed", (0, 1)), ("optimizer.learning_rate", tuple(1e-3 * v for v in tenfold)),
      ("optimizer.weight_decay", tenfold), ("optimizer.label_smoothing", tenfold))))
  with pytest.raises(ConfigError) as raised:
    train.setup(config, str(tmp_path / "run"))
  message = str(raised.value)
  assert "a population of 2000 members needs about 15.6 GiB" in message, message
  fit = int(message.split("at most about ")[1].split()[0])
  assert 1000 < fit < 2000 and not (tmp_path / "run").exists()


def test_a_diverged_member_stops_with_its_state_from_before_and_the_others_go_on(
    small_splits, tmp_path, caplog):
  pairs = (("optimizer.learning_rate", (1e-3, 1e30)), ("run.seed", (0, 1)))
  config = tiny_config(run=dict(num_train_steps=24), parallelism=dict(steps_per_call=1),
                       checkpoints=dict(every_steps=1, keep=30), population=dict(members=pairs))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  rows = _rows(tmp_path / "run")
  assert {r["member"] for r in rows if r.get("diverged")} == {2, 3}
  assert "member 2 (learning_rate=1e+30 seed=0) diverged" in caplog.text
  # Its state is the one from before the step that diverged it (the checkpoint of that step).
  (at,) = {r["status_step"] for r in rows if r.get("diverged")}
  stopped, then = _stacked(tmp_path / "run", config), _stacked(tmp_path / "run", config, at - 1)
  for x, y in zip(jax.tree.leaves((stopped.params, stopped.opt_state)),
                  jax.tree.leaves((then.params, then.opt_state))):
    np.testing.assert_array_equal(np.asarray(x)[2:], np.asarray(y)[2:])
  assert not np.array_equal(np.asarray(stopped.params["logits"]["bias"])[:2],
                            np.asarray(then.params["logits"]["bias"])[:2])  # (the others went on)
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert [m["final"].get("diverged", False) for m in result["population"]["members"]] == [
      False, False, True, True]
  healthy = tiny_config(run=dict(num_train_steps=24), parallelism=dict(steps_per_call=1),
                        population=dict(members=(("run.seed", (0, 1)),)))
  train.train_and_evaluate(healthy, str(tmp_path / "healthy"))
  for a, b in zip([r for r in rows if r["member"] < 2], _rows(tmp_path / "healthy"), strict=True):
    np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-5)  # (not disturbed)
  assert result["final"]["test_loss"] == pytest.approx(  # the means: of those that went on
      np.mean([r["test_loss"] for r in rows if r["member"] < 2 and r["step"] == 24]), rel=1e-5)
  from fmnist_jax import report
  report.write_report(str(tmp_path / "run"))
  text = (tmp_path / "run" / "report" / "report.md").read_text()
  assert text.count("(diverged: stopped, its state from before)") == 2
  numbers = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
  assert numbers["settings"]["learning_rate=0.001"]["members"] == 2
  assert "learning_rate=1e+30" not in numbers["settings"]  # (listed, not summed)
  last = {r["member"]: r for r in rows if r["step"] == 24}
  for entry in numbers["members"]:  # (the same state: the same accuracy in both)
    assert entry["test_accuracy"] == pytest.approx(last[entry["member"]]["test_accuracy"])
  from fmnist_jax import compare
  compare.compare([str(tmp_path / "run")], str(tmp_path / "compare"))
  table = (tmp_path / "compare" / "compare.md").read_text()
  at = last[2]["status_step"]
  assert f"run/m2 (learning_rate=1e+30 seed=0) (diverged at step {at})" in table


def test_a_population_whose_every_member_diverges_stops_naming_them(small_splits, tmp_path):
  config = tiny_config(run=dict(num_train_steps=24), parallelism=dict(steps_per_call=2),
                       population=dict(members=(("optimizer.learning_rate", (1e30, 1e31)),)))
  with pytest.raises(errors.NonFiniteError) as raised:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(raised.value)
  assert "in members 0 (learning_rate=1e+30), 1 (learning_rate=1e+31)" in message
  assert "new --workdir with lower values" in message
  assert "Lower optimizer.learning_rate and run the same command" not in message
