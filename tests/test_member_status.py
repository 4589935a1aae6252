"""Members that stop: each member's one status (training | reached | diverged, with its step),
kept in the checkpoint, read by the stop rule, the rows, the messages and result.json."""

import json
import math
import pathlib

import numpy as np
import pytest

from conftest import tiny_config
from fmnist_jax import steps, train

NO_DROPOUT = dict(dropout_rates=(0.0, 0.0, 0.0))


def _rows(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def _result(workdir):
  return json.loads((pathlib.Path(workdir) / "result.json").read_text())


def _target(value, members, epochs=4):
  return tiny_config(run=dict(num_epochs=epochs), model=NO_DROPOUT,
                     optimizer=dict(learning_rate=1e-2),
                     eval=dict(stop_at_accuracy=value, stop_metric="test_accuracy"),
                     population=dict(members=members))


def test_members_that_reached_a_lower_target_train_on_at_a_higher_one(small_splits, tmp_path):
  """Item 1: every member stopped at the target; the same command with a higher target trains
  them on (it failed as 'diverged' before, on every rerun)."""
  members = (("run.seed", (0, 1)),)
  train.train_and_evaluate(_target(0.15, members), str(tmp_path / "run"))
  first = _result(tmp_path / "run")
  assert first["stop_reason"] == "target_reached" and first["step"] < 48
  reached = max(r["test_accuracy"] for r in _rows(tmp_path / "run"))
  higher = reached + 1e-6  # above what every member had at its stop
  train.train_and_evaluate(_target(higher, members, epochs=6), str(tmp_path / "run"))
  rows = [r for r in _rows(tmp_path / "run") if r["step"] > first["step"]]
  assert rows and all(math.isfinite(r["train_loss"]) for r in rows)
  assert {r["member"] for r in rows if r["step"] == first["step"] + 12} == {0, 1}  # both train


def test_a_stopped_members_later_rows_carry_its_values_never_nan(small_splits, tmp_path):
  """Item 2: a member that reached the target while another trains on: its later rows carry
  its last train values (0/0 before), result.json's means hold no NaN."""
  config = _target(0.5, (("optimizer.learning_rate", (1e-2, 3e-3)),), epochs=8)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  rows = [r for r in _rows(tmp_path / "run") if r["member"] == 0]
  stop = next(i for i, r in enumerate(rows) if r.get("status") == "reached")
  later = rows[stop + 1:]
  assert later, "member 0 should stop before member 1"
  for row in later:
    assert (row["train_loss"], row["train_accuracy"]) == (rows[stop]["train_loss"],
                                                          rows[stop]["train_accuracy"])
    assert row["status"] == "reached" and row["status_step"] == rows[stop]["step"]
  settings = _result(tmp_path / "run")["population"]["settings"]
  assert all(math.isfinite(value) for summary in settings.values()
             for value in summary["train_loss"])


def test_a_diverged_member_does_not_keep_the_run_from_ending_at_the_target(small_splits,
                                                                           tmp_path):
  """Item 3: learning rates (1e-2, 1e30): member 0 reaches the target, member 1 diverged: the
  run ends there (no member is training)."""
  train.train_and_evaluate(_target(0.5, (("optimizer.learning_rate", (1e-2, 1e30)),), 8),
                           str(tmp_path / "run"))
  rows, result = _rows(tmp_path / "run"), _result(tmp_path / "run")
  reached = min(r["step"] for r in rows if r["member"] == 0 and r["test_accuracy"] >= 0.5)
  assert result["step"] == reached < 96 and result["stop_reason"] == "target_reached"
  finals = {m["member"]: m["final"] for m in result["population"]["members"]}
  assert (finals[0]["status"], finals[1]["status"]) == ("reached", "diverged")
  assert 0 < finals[1]["status_step"] <= 2  # (lr 1e30: its first steps)


def test_a_member_that_diverged_before_a_resume_is_not_named_again(small_splits, tmp_path,
                                                                   caplog):
  """Item 4: the resumed run says the member diverged at its step, before this resume, and
  does not name it again with the resumed run's steps."""
  caplog.set_level("INFO")
  members = (("optimizer.learning_rate", (1e-3, 1e30)),)
  config = tiny_config(run=dict(num_train_steps=12), population=dict(members=members))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  at = _result(tmp_path / "run")["population"]["members"][1]["final"]["status_step"]
  assert f"member 1 (learning_rate=1e+30) diverged (NaN/inf) at step {at}:" in caplog.text
  caplog.clear()
  config.run.num_train_steps = 24
  train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "diverged (NaN/inf)" not in caplog.text
  assert f"member 1 (learning_rate=1e+30) diverged at step {at} before this resume" in caplog.text
  assert _result(tmp_path / "run")["step"] == 24


def test_with_skipped_updates_one_diverging_member_does_not_stop_the_others(small_splits,
                                                                           tmp_path):
  """Item 5: optimizer.skip_nonfinite_updates already set: the member whose parameters turn
  NaN/inf (optax gives up after 5 skips) stops, the others go on."""
  config = tiny_config(run=dict(num_train_steps=24), optimizer=dict(skip_nonfinite_updates=True),
                       population=dict(members=(("optimizer.learning_rate", (1e-3, 1e30)),)))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  finals = {m["member"]: m["final"] for m in _result(tmp_path / "run")["population"]["members"]}
  assert "status" not in finals[0] and finals[1]["status"] == "diverged"
  assert _result(tmp_path / "run")["stop_reason"] == "completed"


def test_a_single_run_killed_before_its_result_at_the_target_does_not_train_on(small_splits,
                                                                               tmp_path):
  """Item 6: the checkpoint at the target says the run reached it: the rerun trains nothing
  and writes result.json for that step (it trained another epoch before)."""
  config = tiny_config(run=dict(num_epochs=6), model=NO_DROPOUT,
                       optimizer=dict(learning_rate=1e-2),
                       eval=dict(stop_at_accuracy=0.3, stop_metric="test_accuracy"))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  stopped = _result(tmp_path / "run")
  assert stopped["stop_reason"] == "target_reached" and stopped["step"] < 72
  (tmp_path / "run" / "result.json").unlink()  # (killed after the checkpoint, before this)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  rebuilt = _result(tmp_path / "run")
  assert (rebuilt["step"], rebuilt["stop_reason"]) == (stopped["step"], "target_reached")
  assert max(r["step"] for r in _rows(tmp_path / "run")) == stopped["step"]


def test_the_status_is_kept_in_a_single_runs_checkpoint_beside_the_seeds_shapes(small_splits,
                                                                                tmp_path):
  from fmnist_jax import checkpointing
  config = tiny_config(run=dict(num_train_steps=3))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  ckpt = checkpointing.Checkpointer(tmp_path / "run" / "checkpoints", config, read_only=True)
  saved = dict(ckpt.manager.item_metadata(3).tree)
  ckpt.close()
  assert set(dict(saved["status"])) == {"status", "status_step"} and "hparams" not in saved
  assert saved["params"]["conv1"]["kernel"].shape == (3, 3, 1, 4)
  assert steps.STATUS_NAMES[steps.TRAINING] == "training"


@pytest.mark.parametrize("skip", [False, True])
def test_the_divergence_advice_offers_skipping_only_where_it_is_off(skip):
  from fmnist_jax import checkpointing
  config = tiny_config(optimizer=dict(skip_nonfinite_updates=skip))
  saver = checkpointing.Saver(None, config, None, None, names=("a", "b"))
  sums = {"nonfinite": np.array([1, 1]), "diverged": np.array([1, 1])}
  with pytest.raises(Exception) as raised:
    saver.check_finite(sums, (np.array([2, 2]), np.array([3, 4])))
  assert ("skip_nonfinite_updates=True" in str(raised.value)) is not skip
  assert "at step 3, 4, in members 0 (a), 1 (b)" in str(raised.value)


def test_a_populations_result_holds_means_only_and_a_rebuilt_one_equals_it(small_splits,
                                                                          tmp_path):
  """The top level of a population's result.json is the means of the members that did not
  diverge (final and best_by_val, each member's best by its own validation accuracy), never a
  member's row; result.json rebuilt from the run files (deleted, the command run again) equals
  the one written at the end (it lost its population part and averaged the diverged in)."""
  members = (("optimizer.learning_rate", (1e-2, 3e-3, 1e30)),)
  config = tiny_config(run=dict(num_epochs=2), model=NO_DROPOUT,
                       population=dict(members=members))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  written = _result(tmp_path / "run")
  rows = _rows(tmp_path / "run")
  healthy = [r for r in rows if r["member"] < 2]
  for key in ("final", "best_by_val"):
    assert "member" not in written[key] and "learning_rate" not in written[key]
    assert (written[key]["members"], written[key]["diverged"]) == (2, 1)
  assert written["final"]["test_loss"] == pytest.approx(
      np.mean([r["test_loss"] for r in healthy if r["step"] == written["step"]]))
  bests = [max((r for r in healthy if r["member"] == m), key=lambda r: r["val_accuracy"])
           for m in (0, 1)]
  assert written["best_by_val"]["test_accuracy"] == pytest.approx(
      np.mean([r["test_accuracy"] for r in bests]))
  (tmp_path / "run" / "result.json").unlink()
  train.train_and_evaluate(config, str(tmp_path / "run"))
  rebuilt = _result(tmp_path / "run")
  assert rebuilt["rebuilt"] and rebuilt["stop_reason"] == written["stop_reason"]
  for key in ("step", "final", "best_by_val", "population"):
    assert rebuilt[key] == written[key], key
