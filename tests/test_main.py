"""The whole loop: in-process on small splits, and the command line in a subprocess."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, replicated_state, tiny_config
from fmnist_jax import checkpointing, input_pipeline, progress, train
from fmnist_jax.parallel import Parallelism

REQUIRED = {"step", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
            "test_loss", "test_accuracy"}


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _final_params(workdir, config):
  state = replicated_state(config)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config)
  state, _ = ckpt.restore_latest(state)
  ckpt.close()
  return int(state.step), state.params


def test_trains_and_evaluates_after_every_epoch(small_splits, tmp_path):
  config = tiny_config(run=dict(num_epochs=2))  # 200 train images / batch 16 = 12 steps per epoch
  final = train.train_and_evaluate(config, str(tmp_path))
  rows = _metrics(tmp_path)
  assert [r["step"] for r in rows] == [12, 24]
  assert [r["epoch"] for r in rows] == [1.0, 2.0]
  assert all(REQUIRED <= set(r) for r in rows)
  assert rows[-1]["test_count"] == 75 and rows[-1]["val_count"] == 40
  assert final["test_accuracy"] == rows[-1]["test_accuracy"]
  assert (tmp_path / "config.json").exists() and (tmp_path / "run_info.jsonl").exists()
  info = json.loads((tmp_path / "run_info.jsonl").read_text().splitlines()[0])
  assert info["platform"] == "cpu" and info["versions"]["jax"] == jax.__version__
  assert len(info["git_commit"]) == 40 and info["git_dirty"] in (True, False)
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
  assert 24 in checkpointing.complete_steps(tmp_path / "checkpoints")


def test_num_train_steps_stops_mid_epoch_with_a_final_evaluation(small_splits, tmp_path):
  config = tiny_config(run=dict(num_train_steps=17), data=dict(validation_size=0),
                       parallelism=dict(steps_per_call=4))
  train.train_and_evaluate(config, str(tmp_path))
  rows = _metrics(tmp_path)
  assert [r["step"] for r in rows] == [12, 17]
  assert not any(key.startswith("val_") for key in rows[0])


def test_resume_gives_identical_parameters(small_splits, tmp_path):
  config = tiny_config(run=dict(num_train_steps=20), checkpoints=dict(every_steps=5))
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  interrupted = tiny_config(run=dict(num_train_steps=7), checkpoints=dict(every_steps=5))
  train.train_and_evaluate(interrupted, str(tmp_path / "resumed"))
  assert _final_params(tmp_path / "resumed", config)[0] == 7
  train.train_and_evaluate(config, str(tmp_path / "resumed"))  # same workdir: resumes at 7
  step_a, params_a = _final_params(tmp_path / "straight", config)
  step_b, params_b = _final_params(tmp_path / "resumed", config)
  assert step_a == step_b == 20
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  starts = [json.loads(l)["start_step"] for l in
            (tmp_path / "resumed" / "run_info.jsonl").read_text().splitlines()]
  assert starts == [0, 7]


def test_tfds_streaming_order_is_reproducible_and_resumable(synthetic_tfds):
  par = Parallelism("jit")
  data = input_pipeline.TfdsTrainData(synthetic_tfds["data_dir"], "train[:400]", par,
                                      batch_size=32, seed=0)
  assert data.steps_per_epoch == 12
  first = [np.asarray(b["label"]) for b, _ in data.batches(epoch=0, first_step=0, steps_per_call=1)]
  again = [np.asarray(b["label"]) for b, _ in data.batches(epoch=0, first_step=5, steps_per_call=1)]
  assert len(first) == 12 and first[0].shape == (1, 1, 32)  # (steps, members, batch)
  np.testing.assert_array_equal(np.concatenate(first[5:]), np.concatenate(again))
  other = [np.asarray(b["label"]) for b, _ in data.batches(epoch=1, first_step=0, steps_per_call=4)]
  assert [o.shape for o in other] == [(4, 1, 32)] * 3
  assert not np.array_equal(np.concatenate(first).ravel(), np.concatenate(other).ravel())


def _run_main(*args, env=None):
  return subprocess.run([sys.executable, "-m", "fmnist_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_command_line_trains_on_tfds_data_in_streaming_mode(synthetic_tfds, tmp_path):
  result = _run_main("--config", "configs/tiny.py", "--workdir", str(tmp_path),
                     f"--config.data.tfds_dir={synthetic_tfds['data_dir']}",
                     "--config.data.input_mode=tfds", "--config.run.num_train_steps=6")
  assert result.returncode == 0, result.stderr[-3000:]
  # A progress line: step, epoch, images/s, FLOP/s (10 steps per call: logged at step 6; the
  # last line has no ETA).
  assert re.search(r"step 6/6 epoch 0.22 \| train loss [\d.]+ acc [\d.]+ \| [\d,]+ img/s \| "
                   r"[\d.]+ [MGT]FLOP/s", result.stderr), result.stderr[-2000:]
  assert "epoch 0.22 step 6 |" in result.stderr  # (the evaluation line counts epochs alike)
  rows = _metrics(tmp_path)
  assert rows[-1]["step"] == 6 and rows[-1]["test_count"] == synthetic_tfds["test_count"]


@pytest.mark.parametrize("override,message", [
    ("--config.run.batch_size=0", "batch_size=0 must be a positive integer"),
    ("--config.optimizer.name=adamax", "optimizer.name='adamax'"),
])
def test_command_line_rejects_bad_config_before_touching_the_workdir(tmp_path, override,
                                                                     message):
  workdir = tmp_path / "run"
  result = _run_main("--config", "configs/tiny.py", "--workdir", str(workdir), override)
  assert result.returncode != 0
  assert message in result.stderr
  assert not workdir.exists()


def test_command_line_rejects_a_workdir_that_is_a_file(tmp_path):
  target = tmp_path / "file"
  target.write_text("precious")
  result = _run_main("--config", "configs/tiny.py", "--workdir", str(target))
  assert result.returncode != 0 and "is not a directory" in result.stderr
  assert target.read_text() == "precious"


_WATCHING_IMPORTS = ("import atexit, runpy, sys; atexit.register(lambda: print('heavy imports:', "
                     "[m for m in ('jax', 'tensorflow', 'orbax', 'flax') if m in sys.modules], "
                     "file=sys.stderr)); sys.argv[0] = 'fmnist_jax.main'; "
                     "runpy.run_module('fmnist_jax.main', run_name='__main__')")


@pytest.mark.parametrize("mistake,message", [
    (["--workdir", "FILE"], "is not a directory"),
    (["--workdir", "DIR", "--config", "configs/nope.py"], "does not exist"),
    (["--workdir", "DIR", "--batch_size=3"], "--config.run.batch_size=3"),
])
def test_command_line_mistakes_are_refused_before_jax_is_imported(tmp_path, mistake, message):
  (tmp_path / "file").write_text("precious")
  args = [a.replace("FILE", str(tmp_path / "file")).replace("DIR", str(tmp_path / "run"))
          for a in mistake]
  if "--config" not in args:
    args += ["--config", "configs/tiny.py"]
  result = subprocess.run([sys.executable, "-c", _WATCHING_IMPORTS, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
  assert "heavy imports: []" in result.stderr
  assert not (tmp_path / "run").exists()


def test_command_line_reports_a_missing_config_file(tmp_path):
  result = _run_main("--config", "configs/nope.py", "--workdir", str(tmp_path / "w"))
  assert result.returncode != 0 and "nope.py" in result.stderr


def test_one_train_program_per_run_even_with_uneven_last_calls(small_splits, tmp_path):
  """12 steps per epoch in calls of 5 (5, 5, 2) and a stop at step 29 mid-call: the short
  calls are masked steps of the same program, so the train call is traced once."""
  config = tiny_config(run=dict(num_train_steps=29), parallelism=dict(steps_per_call=5))
  train.train_and_evaluate(config, str(tmp_path))
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["step"] == 29 and [r["step"] for r in _metrics(tmp_path)] == [12, 24, 29]
  assert result["traced"]["train_call"] == 1 and result["traced"]["eval_step"] == 1
  # The masked steps changed nothing: the same parameters as calls that fit exactly.
  exact = tiny_config(run=dict(num_train_steps=29), parallelism=dict(steps_per_call=1))
  train.train_and_evaluate(exact, str(tmp_path / "exact"))
  step_a, params_a = _final_params(tmp_path, config)
  step_b, params_b = _final_params(tmp_path / "exact", exact)
  assert step_a == step_b == 29
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert result["host_syncs_per_epoch"] > 0 and result["compile_seconds"] > 0
  startup = result["startup_seconds"]  # from process start to the first call, by phase
  assert list(startup) == list(progress.Startup.PHASES) + ["total"]
  assert all(v >= 0 for v in startup.values()) and startup["compile"] > 0
  assert startup["total"] == pytest.approx(sum(startup[p] for p in progress.Startup.PHASES),
                                           abs=0.01)
  assert startup["imports"] > 0.2  # counted from the process's start, not from the loop's


def test_epoch_end_saves_wait_for_checkpoint_every_seconds(small_splits, tmp_path):
  """With a long interval only the final state is saved (every epoch still gets its metrics
  row); with 0, every epoch's end is saved."""
  config = tiny_config(run=dict(num_epochs=3),
                       checkpoints=dict(every_steps=0, keep=5, every_seconds=1e9))
  train.train_and_evaluate(config, str(tmp_path / "rare"))
  assert [r["step"] for r in _metrics(tmp_path / "rare")] == [12, 24, 36]
  steps = checkpointing.complete_steps(tmp_path / "rare" / "checkpoints")
  assert steps == [36]
  config.checkpoints.every_seconds = 0.0
  train.train_and_evaluate(config, str(tmp_path / "every"))
  steps = checkpointing.complete_steps(tmp_path / "every" / "checkpoints")
  assert steps == [12, 24, 36]


def test_saves_are_written_while_later_calls_are_queued(small_splits, tmp_path, monkeypatch):
  """No save waits for the device at its own step: a periodic save is a copy, written at the
  next save point or the epoch's end, and an epoch's save once the next epoch's calls are
  queued. What is saved is the state at its step."""
  dispatched, saves = [0], []
  compile_train, save = Parallelism.compile_train, checkpointing.Checkpointer.save

  def counting_compile_train(self, *args, **kwargs):
    train_fn = compile_train(self, *args, **kwargs)

    def call(state, batch, sums, num, *teacher):
      dispatched[0] += int(num)
      return train_fn(state, batch, sums, num, *teacher)
    return call

  def recording_save(self, step, *args, **kwargs):
    saves.append((step, dispatched[0]))
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(Parallelism, "compile_train", counting_compile_train)
  monkeypatch.setattr(checkpointing.Checkpointer, "save", recording_save)
  config = tiny_config(run=dict(num_epochs=3), parallelism=dict(steps_per_call=1),
                       checkpoints=dict(every_steps=5, keep=20))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  saved = [step for step, _ in saves]
  assert saved == sorted(saved), saves  # oldest first (Orbax takes no step below its latest)
  assert set(saved) == {5, 10, 15, 20, 25, 30, 35} | {12, 24, 36}  # every save point, epoch end
  assert all(queued > step for step, queued in saves[:-1]), saves
  assert saves[-1] == (36, 36)  # the end of the run: nothing left to queue
  train.train_and_evaluate(tiny_config(run=dict(num_train_steps=5),
                                       parallelism=dict(steps_per_call=1)),
                           str(tmp_path / "five"))
  ckpt = checkpointing.Checkpointer(tmp_path / "run" / "checkpoints", config, read_only=True)
  at_five = ckpt.restore(5, replicated_state(config))[0].params
  ckpt.close()
  for a, b in zip(jax.tree.leaves(_final_params(tmp_path / "five", config)[1]),
                  jax.tree.leaves(at_five)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_console_ends_with_a_summary_and_a_rerun_says_it_is_finished(synthetic_tfds, tmp_path):
  args = ("--config", "configs/tiny.py", "--workdir", str(tmp_path),
          f"--config.data.tfds_dir={synthetic_tfds['data_dir']}", "--config.run.num_train_steps=6")
  first = _run_main(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  assert re.search(r"done \(completed\) at step 6, epoch [\d.]+: test accuracy [\d.]+, loss "
                   r"[\d.]+ \| [\d.]+ s \([\d.]+ s compiling\), [\d,]+ img/s \| .*: "
                   r"metrics.jsonl, result.json, checkpoints/", first.stderr), first.stderr[-2000:]
  assert "tracked_metric" not in first.stderr  # Orbax's notes on normal use stay quiet
  assert re.search(r"train program ready: [\d.]+ s of compiling", first.stderr)
  again = _run_main(*args)
  assert again.returncode == 0 and "already finished at step 6 of 6" in again.stderr


@pytest.mark.slow
def test_console_shows_the_projects_lines_and_verbose_the_libraries(synthetic_tfds, tmp_path):
  args = ("--config", "configs/tiny.py", f"--config.data.tfds_dir={synthetic_tfds['data_dir']}",
          "--config.run.num_train_steps=6")
  no_cache = {"FMNIST_JAX_DATA_CACHE_DIR": ""}  # tfds reads the data: its INFO lines appear
  quiet = _run_main(*args, "--workdir", str(tmp_path / "quiet"), env=no_cache)
  verbose = _run_main(*args, "--workdir", str(tmp_path / "verbose"), "--verbose", env=no_cache)
  assert quiet.returncode == verbose.returncode == 0, quiet.stderr[-2000:]
  for library_line in ("dataset_info.py", "xla_bridge.py"):  # tfds INFO, JAX's backend search
    assert library_line not in quiet.stderr and library_line in verbose.stderr, library_line
  assert "train program ready" in quiet.stderr and "done (completed)" in quiet.stderr
  # TensorFlow's oneDNN banner (printed at import whatever the log level) is gone too; every
  # line the default console shows is the project's own.
  assert "oneDNN" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr
  # The project's lines carry a time and no file:line; the libraries' keep absl's prefix.
  assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in quiet.stderr.splitlines()), \
      quiet.stderr
  assert re.search(r"^[IW]\d{4} [\d:.]+ +\d+ \w+\.py:\d+\]", verbose.stderr, re.M)


def test_tensorboard_gets_progress_scalars_and_the_config_as_hyperparameters(small_splits,
                                                                             tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  config = tiny_config(run=dict(num_epochs=2), logging=dict(every_steps=4),
                       parallelism=dict(steps_per_call=2), optimizer=dict(learning_rate=1e-3))
  train.train_and_evaluate(config, str(tmp_path))
  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  tags = events.Tags()["scalars"]
  for tag in ("progress/train_loss", "progress/learning_rate", "progress/images_per_second",
              "test_accuracy", "val_loss"):
    assert tag in tags, tags
  learning_rates = events.Scalars("progress/learning_rate")
  # One point per printed progress line (a line whose values are ready when a newer one is
  # ready too is dropped), at log points: steps 4, 8, ..., 24.
  steps = [e.step for e in learning_rates]
  assert len(steps) >= 3 and set(steps) <= {4, 8, 12, 16, 20, 24}, steps
  assert all(e.value == pytest.approx(1e-3) for e in learning_rates)  # the constant schedule
  assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
