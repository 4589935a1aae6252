"""Faults: kills, preemption, damaged or mismatched checkpoints, NaN/inf, bad input.

Each case here is a row of docs/faults.md's "Faults and bad input" table.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, replicated_state, synthetic_arrays, tiny_config
from fmnist_jax import checkpointing, errors, preemption, state as state_lib, steps, train
from fmnist_jax import workdir as workdir_lib




def _restore(workdir, config, step=None):
  ckpt = checkpointing.Checkpointer(pathlib.Path(workdir) / "checkpoints", config,
                                    read_only=True)
  try:
    state = replicated_state(config)
    return (ckpt.restore(step, state) if step is not None else ckpt.restore_latest(state))[0]
  finally:
    ckpt.close()


def _assert_identical(a, b):
  assert int(a.step) == int(b.step)
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state)),
                  jax.tree.leaves((b.params, b.opt_state))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _snapshot(directory):
  """Every file of a workdir but the run lock (which each start takes and names itself in)."""
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in pathlib.Path(directory).rglob("*") if p.is_file() and p.name != ".lock"}


# --- kills and preemption: real subprocesses -----------------------------------------------

KILL_RUN = ("--config.run.num_train_steps=40", "--config.checkpoints.every_steps=10",
            "--config.parallelism.steps_per_call=1", "--config.checkpoints.keep=3")
# The run waits after its first checkpoint (fmnist_jax.preemption): the signal lands mid-run.
PAUSED = {**os.environ, preemption.PAUSE_VARIABLE: "300"}


def _main_command(workdir, data_dir, input_mode):
  return [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py",
          "--workdir", str(workdir), f"--config.data.tfds_dir={data_dir}",
          f"--config.data.input_mode={input_mode}", *KILL_RUN]


def _run(command):
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _start_and_signal(command, workdir, sig):
  """Starts a run that pauses after its first periodic checkpoint, waits until that checkpoint
  exists, then sends `sig`."""
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=PAUSED)
  checkpoints = pathlib.Path(workdir) / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
      break
    time.sleep(0.05)
  assert process.poll() is None, "the run ended before it could be interrupted"
  process.send_signal(sig)
  _, stderr = process.communicate(timeout=300)
  return process.returncode, stderr


def _tiny():
  return tiny_config(run=dict(num_train_steps=40), checkpoints=dict(every_steps=10))


@pytest.fixture(scope="module")
def uninterrupted(synthetic_tfds, tmp_path_factory):
  """The final state of an uninterrupted run, per input mode (computed once)."""
  states = {}

  def get(input_mode):
    if input_mode not in states:
      workdir = tmp_path_factory.mktemp(f"straight_{input_mode}")
      _run(_main_command(workdir, synthetic_tfds["data_dir"], input_mode))
      states[input_mode] = _restore(workdir, _tiny())
    return states[input_mode]
  return get


@pytest.mark.slow
@pytest.mark.parametrize("input_mode", ["device", "tfds"])
def test_sigkill_mid_run_then_rerun_is_bit_identical(synthetic_tfds, tmp_path, input_mode,
                                                     uninterrupted):
  command = _main_command(tmp_path / "killed", synthetic_tfds["data_dir"], input_mode)
  returncode, _ = _start_and_signal(command, tmp_path / "killed", signal.SIGKILL)
  assert returncode == -signal.SIGKILL
  killed_at = _restore(tmp_path / "killed", _tiny())
  assert 0 < int(killed_at.step) < 40  # it really stopped mid-run
  _run(command)  # the same command again: resumes and finishes
  _assert_identical(uninterrupted(input_mode), _restore(tmp_path / "killed", _tiny()))
  starts = [json.loads(line)["start_step"] for line in
            (tmp_path / "killed" / "run_info.jsonl").read_text().splitlines()]
  assert starts[0] == 0 and 0 < starts[-1] < 40


@pytest.mark.slow
def test_sigterm_saves_waits_and_exits_with_the_preemption_code(synthetic_tfds, tmp_path,
                                                                uninterrupted):
  command = _main_command(tmp_path / "run", synthetic_tfds["data_dir"], "device")
  returncode, stderr = _start_and_signal(command, tmp_path / "run", signal.SIGTERM)
  assert returncode == preemption.Preempted.exit_code, stderr[-3000:]
  assert "preempted (SIGTERM): checkpoint saved at step" in stderr
  step = int(stderr.split("checkpoint saved at step ")[1].split(";")[0])
  preempted = _restore(tmp_path / "run", _tiny())
  assert int(preempted.step) == step  # the state at the signal, not an older periodic save
  _run(command)
  _assert_identical(uninterrupted("device"), _restore(tmp_path / "run", _tiny()))


# --- damaged and mismatched checkpoints (in-process, small splits) -------------------------

def _corrupt(step_dir: pathlib.Path, metadata: bool = True):
  """Truncates every file of a checkpoint (or only its array data) to half its size."""
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 16
           and (metadata or p.parent.name == "d")]
  for path in files:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
  assert files


def test_damaged_latest_checkpoint_falls_back_and_is_moved_aside(small_splits, tmp_path, caplog):
  config = tiny_config(run=dict(num_train_steps=20), checkpoints=dict(every_steps=5))
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  checkpoints = tmp_path / "run" / "checkpoints"
  fallback = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit() and p.name != "20")
  _corrupt(checkpoints / "20")
  caplog.set_level("WARNING")
  train.train_and_evaluate(config, str(tmp_path / "run"))  # falls back, trains on to 20
  assert "checkpoint" in caplog.text and "cannot be restored" in caplog.text
  moved = list((tmp_path / "run" / "checkpoints_damaged").iterdir())
  assert [p.name.split("-")[0] for p in moved] == ["20"]
  starts = [json.loads(line)["start_step"] for line in
            (tmp_path / "run" / "run_info.jsonl").read_text().splitlines()]
  assert starts == [0, fallback] and 0 < fallback < 20
  _assert_identical(_restore(tmp_path / "straight", config), _restore(tmp_path / "run", config))


def _rewrite_with_other_values(directory: pathlib.Path, step: int) -> None:
  """Checkpoint `step` rewritten, readable, with one parameter changed and everything else as
  saved (its checksums too): array data damaged in a way Orbax's reads cannot see (a flipped
  byte usually breaks the compressed chunk instead, which was caught before)."""
  import shutil
  import orbax.checkpoint as ocp
  original = directory.parent / "original"
  manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
  tree = manager.restore(step)
  tree["params"]["conv1"]["bias"] = tree["params"]["conv1"]["bias"] + 1.0
  shutil.move(str(directory / str(step)), str(original))
  manager.reload()
  manager.save(step, args=ocp.args.StandardSave(tree), force=True)
  manager.wait_until_finished()
  manager.close()
  shutil.rmtree(directory / str(step) / "metrics", ignore_errors=True)
  shutil.copytree(original / "metrics", directory / str(step) / "metrics")
  shutil.rmtree(original)


def test_array_data_damaged_but_readable_is_caught_by_its_checksum(small_splits, tmp_path,
                                                                  caplog):
  """A checkpoint whose array data changed but still reads: Orbax restored it without a word
  (the run went on from damaged parameters, and pruned the good checkpoints). The checksums
  saved with the arrays tell: it is moved aside as damaged, the previous one used, and the run
  ends as an uninterrupted one."""
  config = tiny_config(run=dict(num_train_steps=20), checkpoints=dict(every_steps=5))
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  _rewrite_with_other_values(tmp_path / "run" / "checkpoints", 20)
  caplog.set_level("WARNING")
  train.train_and_evaluate(config, str(tmp_path / "run"))  # falls back, trains on to 20
  assert "differ from the checksums saved with them" in caplog.text
  assert [p.name.split("-")[0] for p in (tmp_path / "run" / "checkpoints_damaged").iterdir()] \
      == ["20"]
  _assert_identical(_restore(tmp_path / "straight", config), _restore(tmp_path / "run", config))


@pytest.mark.parametrize("metadata,message", [(True, "have damaged metadata"),
                                              (False, "none of the checkpoints")])
def test_no_restorable_checkpoint_stops_and_changes_nothing(small_splits, tmp_path, metadata,
                                                            message):
  config = tiny_config(run=dict(num_train_steps=20), checkpoints=dict(every_steps=5))
  train.train_and_evaluate(config, str(tmp_path))
  for step_dir in (tmp_path / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      _corrupt(step_dir, metadata)
  before = _snapshot(tmp_path)
  with pytest.raises(checkpointing.CheckpointError, match=message):
    train.train_and_evaluate(config, str(tmp_path))
  assert _snapshot(tmp_path) == before


def test_checkpoint_from_another_model_names_the_mismatched_shapes(small_splits, tmp_path):
  train.train_and_evaluate(tiny_config(run=dict(num_train_steps=5)), str(tmp_path))
  before = _snapshot(tmp_path)
  wider = tiny_config(run=dict(num_train_steps=10), model=dict(conv_features=(4, 8, 16)))
  with pytest.raises(checkpointing.CheckpointError) as error:
    train.train_and_evaluate(wider, str(tmp_path))
  assert "params['conv3']['kernel']: checkpoint (3, 3, 8, 8), config (3, 3, 8, 16)" in \
      str(error.value)
  assert _snapshot(tmp_path) == before
  with pytest.raises(checkpointing.CheckpointError, match="opt_state: .* arrays in the checkpoint"):
    train.train_and_evaluate(tiny_config(run=dict(num_train_steps=10), optimizer=dict(name="sgd")),
                             str(tmp_path))
  assert _snapshot(tmp_path) == before


# --- NaN / inf ------------------------------------------------------------------------------

def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(small_splits,
                                                                         tmp_path):
  train.train_and_evaluate(tiny_config(run=dict(num_train_steps=12)), str(tmp_path))
  good = _restore(tmp_path, tiny_config())
  # An absurd learning rate blows the parameters up to inf within a few steps.
  exploding = tiny_config(run=dict(num_train_steps=24), optimizer=dict(learning_rate=1e30),
                          checkpoints=dict(every_steps=2), parallelism=dict(steps_per_call=1))
  with pytest.raises(errors.NonFiniteError, match=r"non-finite loss or gradient at step \d+"):
    train.train_and_evaluate(exploding, str(tmp_path))
  steps = checkpointing.complete_steps(tmp_path / "checkpoints")
  restored = _restore(tmp_path, tiny_config(), step=12)
  _assert_identical(good, restored)
  for step in steps:  # whatever was saved after step 12 is finite
    leaves = jax.tree.leaves(_restore(tmp_path, exploding, step=step).params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)


def test_skip_nonfinite_updates_drops_the_update():
  config = tiny_config(optimizer=dict(skip_nonfinite_updates=True),
                       model=dict(dropout_rates=(0.0, 0.0, 0.0)))
  state = state_lib.initial_state(config)
  params = jax.tree.map(lambda x: x, state.params)
  params["logits"]["bias"] = params["logits"]["bias"].at[0].set(jnp.nan)
  state = state.replace(params=params)
  images, labels = synthetic_arrays(16)
  new, metrics = jax.jit(steps.train_step)(state, {"image": images, "label": labels})
  assert int(metrics["nonfinite"]) == 1 and int(metrics["count"]) == 0
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # NaN == NaN here
  assert isinstance(new.opt_state, optax.ApplyIfFiniteState)
  assert int(new.opt_state.notfinite_count) == 1


# --- bad input on the command line ---------------------------------------------------------

def _main(*args):
  return subprocess.run([sys.executable, "-m", "fmnist_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_config_file_with_a_syntax_error_gets_one_paragraph(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n  pass\n")
  result = _main("--config", str(bad), "--workdir", str(tmp_path / "w"))
  assert result.returncode != 0
  assert "has a syntax error at line 1" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_workdir_below_a_file_is_rejected(tmp_path):
  (tmp_path / "file").write_text("precious")
  result = _main("--config", "configs/tiny.py", "--workdir", str(tmp_path / "file" / "run"))
  assert result.returncode != 0 and "error:" in result.stderr
  assert "Traceback" not in result.stderr
  assert (tmp_path / "file").read_text() == "precious"


# --- round two: damaged run files, bad workdirs, config mistakes ----------------------------

def test_a_cut_metrics_line_is_skipped_and_never_glued_onto(small_splits, tmp_path, caplog):
  config = tiny_config(run=dict(num_epochs=1))
  train.train_and_evaluate(config, str(tmp_path))
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_bytes(metrics.read_bytes() + b'{"step": 99, "epo')  # a kill mid-write
  caplog.set_level("WARNING")
  train.train_and_evaluate(tiny_config(run=dict(num_epochs=2)), str(tmp_path))  # resumes: epoch 2
  rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]
  assert [r["step"] for r in rows] == [12, 24]  # the new row is whole, on its own line
  assert "line 2 is damaged and skipped" in caplog.text
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["step"] == 24 and result["best_by_val"]["step"] in (12, 24)


def test_a_damaged_config_json_stops_before_training_and_is_kept(small_splits, tmp_path):
  train.train_and_evaluate(tiny_config(run=dict(num_epochs=1)), str(tmp_path))
  (tmp_path / "config.json").write_bytes(b"\xff\xfe not json")
  before = _snapshot(tmp_path)
  with pytest.raises(errors.ConfigError, match="config.json is damaged"):
    train.train_and_evaluate(tiny_config(run=dict(num_epochs=2)), str(tmp_path))
  assert (tmp_path / "config.json").read_bytes() == b"\xff\xfe not json"
  assert {k for k in _snapshot(tmp_path) if "metrics" in k} == \
      {k for k in before if "metrics" in k}


@pytest.mark.parametrize("args,message", [
    (["--workdir="], "--workdir is empty"),
    (["--config.run.batch_sise=16"], "has no field 'run.batch_sise'; did you mean run.batch_size"),
    (["--config.run.learning_rate=0.01"], "did you mean optimizer.learning_rate?"),
    (["--config.optimzer.name=sgd"], "did you mean optimizer.name?"),
    (["--config.optimizer=sgd"], "--config.optimizer is a section: set one of its fields, e.g. "
                                 "--config.optimizer.name="),
    (["--config.learning_rate=0.01"], "--config.learning_rate is now "
                                      "--config.optimizer.learning_rate"),
    (["--config.population.members={'optimizer.learning_rate': (1e-3, 3e-3)}"],
     "--config.population.members={'optimizer.learning_rate': (1e-3, 3e-3)}: a dict, where"),
    (["--config.population.per_pass=2"], "population.per_pass=2 needs a population"),
    (["--config.optimizer.warmup_epochs=inf"], "warmup_epochs=inf must be a finite number"),
    (["--config.optimizer.learning_rate=inf"], "learning_rate=inf must be > 0 and finite"),
    (["--config.run.seed=18446744073709551616"], "must be below 2**31"),
    (["--config.run.seed=2147483648"], "run.seed=2147483648 must be below 2**31"),
    (["--config.optimizer.weight_decay=inf"], "weight_decay=inf must be >= 0 and finite"),
    (["--config.eval.batch_size=1000000000"], "larger than the largest evaluated split"),
    (["--config.model.num_classes=5"], "Fashion-MNIST has 10 classes"),
    (["--config.eval.stop_at_accuracy=0.5", "--config.data.validation_size=0"],
     "stop_metric='val_accuracy' needs the val split"),
    (["--config.run.batch_size=abc"], "--config.run.batch_size=abc: invalid literal"),
    (["--config.run.num_train_step", "2"], "did you mean run.num_train_steps?"),
    (["--config.augment_flip=True"], "--config.augment_flip is now --config.augment.flip (one "
                                     "mode now: True is 'random'"),
    (["--config.augment_flip_alternate=True"], "is now --config.augment.flip='alternate'"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
     "--process_id=2 must be in 0..1 (--num_processes=2)"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2"],
     "--coordinator_address needs --num_processes=N and --process_id=I"),
    (["--num_processes=2", "--process_id=0"], "need --coordinator_address=HOST:PORT"),
])
def test_user_mistakes_get_one_line_and_no_workdir(tmp_path, args, message):
  workdir = tmp_path / "w"
  command = ["--config", "configs/tiny.py", "--workdir", str(workdir), *args]
  if args[0].startswith("--workdir"):
    command = ["--config", "configs/tiny.py", *args]
  result = _main(*command)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr and not workdir.exists()


FROM_DEFAULT = "from configs import default\ndef get_config():\n  c = default.get_config()\n"


@pytest.mark.parametrize("body,message", [
    ("def other():\n  pass\n", "defines no get_config()"),
    ("def get_config():\n  return {'batch_size': 3}\n", "returned a dict"),
    (FROM_DEFAULT + "  c.learning_rate = 1e-3\n  return c\n",
     ": config.learning_rate is now config.optimizer.learning_rate"),
    (FROM_DEFAULT + "  del c.augment\n  return c\n", "has no section config.augment"),
    (FROM_DEFAULT + "  c.optimizer.learning_rte = 0.1\n  return c\n",
     "config.optimizer.learning_rte, which is no field of the config; did you mean "
     "config.optimizer.learning_rate?"),
    (FROM_DEFAULT + "  c.optimiser = default.get_config().optimizer\n  return c\n",
     "did you mean config.optimizer?"),
])
def test_config_files_without_a_config_dict_get_one_paragraph(tmp_path, body, message):
  bad = tmp_path / "bad.py"
  bad.write_text(body)
  result = _main("--config", str(bad), "--workdir", str(tmp_path / "w"))
  assert result.returncode != 0 and message in result.stderr
  assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()


def test_a_flagfile_is_checked_as_the_command_line(tmp_path):
  (tmp_path / "flags.txt").write_text("--config.run.num_train_stps=3\n")
  for flagfile, message in ((tmp_path / "flags.txt", "did you mean run.num_train_steps?"),
                            (tmp_path / "nope.txt", "--flagfile: Unable to open flagfile")):
    result = _main("--config", "configs/tiny.py", f"--flagfile={flagfile}",
                   "--workdir", str(tmp_path / "w"))
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_workdir_after_an_equals_sign_is_expanded_once_for_the_run_and_its_report(
    synthetic_tfds, tmp_path):
  """`--workdir=~/runs/t1`: bash leaves the `~`; the run and its report both use $HOME/runs/t1
  (the report looked for the unexpanded path, and every rerun failed)."""
  result = subprocess.run(
      [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py",
       f"--config.data.tfds_dir={synthetic_tfds['data_dir']}", "--config.run.num_train_steps=2",
       "--config.logging.write_report=True", "--workdir=~/runs/t1"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "HOME": str(tmp_path)})
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / "runs" / "t1" / "report" / "report.md").is_file()
  assert not (ROOT / "~").exists()


@pytest.mark.slow
def test_a_process_whose_peers_never_connect_gives_up_in_one_line(tmp_path):
  """Process 0 of 2 alone (its peer failed on its flags, or was never started): it said
  nothing for 150 s and more; it says whom it waits for, then gives up in one line."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  start = time.time()
  result = _main("--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
                 f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 "--process_id=0", "--distributed_timeout=5")
  assert result.returncode == 1 and time.time() - start < 120, result.stderr[-2000:]
  assert f"process 0 of 2, coordinator 127.0.0.1:{port}: waiting up to 5 s" in result.stderr
  assert "not every process connected within 5 s" in result.stderr.splitlines()[-1]
  assert not (tmp_path / "w").exists()


def test_a_workdir_holding_a_source_tree_is_refused(small_splits, tmp_path):
  (tmp_path / "setup.cfg").write_text("[metadata]\n")
  (tmp_path / "module.py").write_text("x = 1\n")
  before = _snapshot(tmp_path)
  with pytest.raises(errors.ConfigError, match="holds files that are not a fmnist_jax run's"):
    train.train_and_evaluate(tiny_config(run=dict(num_epochs=1)), str(tmp_path))
  assert _snapshot(tmp_path) == before


@pytest.mark.slow
def test_ctrl_c_saves_like_sigterm_and_a_second_one_aborts(synthetic_tfds, tmp_path):
  command = _main_command(tmp_path / "run", synthetic_tfds["data_dir"], "device")
  returncode, stderr = _start_and_signal(command, tmp_path / "run", signal.SIGINT)
  assert returncode == preemption.Preempted.exit_code, stderr[-3000:]
  assert "interrupted (Ctrl-C): checkpoint saved at step" in stderr
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
  step = int(stderr.split("checkpoint saved at step ")[1].split(";")[0])
  assert int(_restore(tmp_path / "run", _tiny()).step) == step


WIDE = (128, 256, 256)  # a CNN whose calls take a second on 2 cores


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once_with_one_line(synthetic_tfds, tmp_path):
  """Calls of ~1 s (13 steps of 32 images of a wide CNN): the second Ctrl-C, 0.3 s after the
  first one's warning, lands while the first one's save waits for the current call, and
  aborts it."""
  workdir = tmp_path / "twice"
  command = [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py",
             "--workdir", str(workdir), f"--config.data.tfds_dir={synthetic_tfds['data_dir']}",
             "--config.run.batch_size=32", "--config.parallelism.steps_per_call=13",
             f"--config.model.conv_features={WIDE}", "--config.model.dense_features=256",
             "--config.checkpoints.every_steps=0", "--config.run.num_epochs=100"]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  checkpoints, lines = workdir / "checkpoints", []
  for line in process.stderr:  # the first epoch's checkpoint: something to keep intact
    lines.append(line)
    if "epoch 1.00 step 13" in line:
      break
  deadline = time.time() + 60
  while not checkpoints.is_dir() or not checkpointing.complete_steps(checkpoints):
    assert time.time() < deadline and process.poll() is None, "".join(lines)[-3000:]
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  for line in process.stderr:
    lines.append(line)
    if "Ctrl-C: saving a checkpoint" in line:
      break
  time.sleep(0.3)
  process.send_signal(signal.SIGINT)
  stderr = "".join(lines) + process.communicate(timeout=300)[1]
  assert process.returncode == 1, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("aborted (Ctrl-C): the checkpoints already written are intact"), last
  assert "checkpoint saved at step" not in stderr and "Traceback" not in stderr
  wide = tiny_config(run=dict(batch_size=32), model=dict(conv_features=WIDE, dense_features=256))
  assert int(_restore(workdir, wide).step) % 13 == 0


def test_a_second_run_on_a_workdir_in_use_is_refused(small_splits, tmp_path):
  """The lock is an flock held by process 0 for the whole run (released when it ends)."""
  from fmnist_jax import workdir
  train.train_and_evaluate(tiny_config(run=dict(num_epochs=1)), str(tmp_path))
  before = _snapshot(tmp_path)
  held = workdir.Lock(tmp_path)  # another run holds it
  try:
    with pytest.raises(errors.ConfigError, match=r"is in use by another run \(pid \d+ on "):
      train.train_and_evaluate(tiny_config(run=dict(num_epochs=2)), str(tmp_path))
  finally:
    held.release()
  assert _snapshot(tmp_path) == before
  # free again: resumes
  train.train_and_evaluate(tiny_config(run=dict(num_epochs=2)), str(tmp_path))
  assert json.loads((tmp_path / "result.json").read_text())["step"] == 24


def test_a_resume_that_changes_what_a_step_means_is_refused(small_splits, tmp_path, caplog):
  train.train_and_evaluate(tiny_config(run=dict(num_epochs=1)), str(tmp_path))  # 12 steps of 16
  before = _snapshot(tmp_path)
  with pytest.raises(errors.ConfigError,
                     match=r"changed run.batch_size \(run.batch_size 16 -> 32\)"):
    train.train_and_evaluate(tiny_config(run=dict(num_epochs=2, batch_size=32)), str(tmp_path))
  assert _snapshot(tmp_path) == before
  caplog.set_level("WARNING")  # other changes are said, and allowed
  train.train_and_evaluate(tiny_config(run=dict(num_epochs=2)), str(tmp_path))
  assert "num_epochs 1 -> 2" in caplog.text
  allowed = tiny_config(run=dict(num_epochs=5, batch_size=32),
                        checkpoints=dict(resume_with_changed_steps=True))
  train.train_and_evaluate(allowed, str(tmp_path))
  assert json.loads((tmp_path / "result.json").read_text())["resumed_from_step"] == 24


def test_a_damaged_prepared_dataset_is_named_and_no_workdir_is_made(synthetic_tfds, tmp_path):
  import shutil
  data_dir = tmp_path / "tfds"
  shutil.copytree(synthetic_tfds["data_dir"], data_dir)
  record = next((data_dir / "fashion_mnist").rglob("*test.tfrecord*"))
  record.write_bytes(record.read_bytes()[:len(record.read_bytes()) // 2])
  workdir = tmp_path / "run"
  with pytest.raises(errors.DataError, match=r"fashion_mnist is damaged .*delete that folder"):
    train.train_and_evaluate(tiny_config(data=dict(tfds_dir=str(data_dir)),
                                         run=dict(num_train_steps=2)),
                             str(workdir))
  assert not workdir.exists()


def test_a_metrics_row_written_again_after_a_resume_replaces_the_old_one(small_splits,
                                                                         tmp_path):
  """A kill between an evaluation's row and its checkpoint: the resumed run evaluates that
  step again, and metrics.jsonl keeps one row per step, the new one."""
  # row and checkpoint 12
  train.train_and_evaluate(tiny_config(run=dict(num_epochs=1)), str(tmp_path))
  metrics = tmp_path / "metrics.jsonl"
  with open(metrics, "a") as f:  # the row of step 24, whose checkpoint never got written
    f.write(json.dumps({"step": 24, "epoch": 2.0, "train_loss": 999.0}) + "\n")
  train.train_and_evaluate(tiny_config(run=dict(num_epochs=2)), str(tmp_path))
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert [r["step"] for r in rows] == [12, 24] and rows[1]["train_loss"] < 999


def test_a_run_preempted_mid_epoch_writes_the_rows_of_an_uninterrupted_one(small_splits,
                                                                          tmp_path, caplog):
  """The epoch's running train sums are saved with a mid-epoch checkpoint: the resumed
  epoch's train loss and accuracy average all of its steps, and every row of metrics.jsonl
  equals the uninterrupted run's (12 steps per epoch; preempted after step 14)."""
  config = tiny_config(run=dict(num_epochs=3), parallelism=dict(steps_per_call=1),
                       checkpoints=dict(every_steps=0))
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  reached = preemption.PreemptionWatch.reached

  def preempted_at_14(watch):
    return reached(watch) or watch.calls == 14
  preemption.PreemptionWatch.reached = preempted_at_14
  try:
    with pytest.raises(preemption.Preempted, match="checkpoint saved at step 14"):
      train.train_and_evaluate(config, str(tmp_path / "run"))
  finally:
    preemption.PreemptionWatch.reached = reached
  caplog.set_level("INFO")
  train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "resuming at step 14: epoch 1.17, 224 examples seen" in caplog.text

  def rows(run):
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_seconds"}
            for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
  straight, resumed = rows("straight"), rows("run")
  assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [12, 24, 36]
  for a, b in zip(resumed, straight):
    assert a.keys() == b.keys() and a == pytest.approx(b, rel=1e-6), (a, b)


_CUT_SHORT_WRITER = """
import asyncio, sys
from fmnist_jax import console
if sys.argv[1] == "quiet":
  console.quiet_cut_short_writers()
async def write():
  pass
loop = asyncio.new_event_loop()
loop.close()
pending = write()  # held until exit, as Orbax's writer threads hold theirs
try:  # what such a writer does once a full disk has closed its event loop
  asyncio.run_coroutine_threadsafe(pending, loop)
except RuntimeError:
  pass
sys.exit("error: the run's own line")
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_a_cut_short_writers_coroutine_does_not_print_after_the_error_line(mode):
  """A coroutine handed to a closed loop warns "never awaited" when it is collected, which
  can be at exit, after the error line (seen in CI on the full-tmpfs test); --verbose keeps it."""
  result = subprocess.run([sys.executable, "-c", _CUT_SHORT_WRITER, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and "error: the run's own line" in lines, result.stderr
  assert (lines[-1] == "error: the run's own line") == (mode == "quiet"), result.stderr


def test_a_full_disk_stops_with_one_line_naming_the_last_checkpoint(small_splits, tmp_path,
                                                                    monkeypatch):
  """ENOSPC injected into the second checkpoint save (the tmpfs test below is the real one)."""
  import errno
  save = checkpointing.Checkpointer.save

  def save_then_fill(ckpt, step, *args, **kwargs):
    if checkpointing.complete_steps(ckpt.directory):
      raise OSError(errno.ENOSPC, "No space left on device", str(ckpt.directory / str(step)))
    return save(ckpt, step, *args, **kwargs)
  monkeypatch.setattr(checkpointing.Checkpointer, "save", save_then_fill)
  with pytest.raises(errors.DiskFullError, match=r"no space left on the device holding .* the "
                     r"last complete checkpoint is step 10 .*run the same command again"):
    train.train_and_evaluate(tiny_config(run=dict(num_epochs=3)), str(tmp_path))


@pytest.mark.slow
def test_a_full_tmpfs_gives_one_error_line_and_a_rerun_with_space_is_bit_identical(
    synthetic_tfds, tmp_path, uninterrupted):
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()[:100]}); the injected "
                "ENOSPC test covers the logic")
  try:
    command = _main_command(disk / "run", synthetic_tfds["data_dir"], "device")
    command.append("--config.checkpoints.keep=100")  # the disk fills within 40 steps
    full = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left on the device holding"), last
    step = int(last.split("last complete checkpoint is step ")[1].split(" ")[0])
    assert 0 < step < 40 and int(_restore(disk / "run", _tiny()).step) == step
    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    _run(command)  # space again: the same command resumes and finishes
    _assert_identical(uninterrupted("device"), _restore(disk / "run", _tiny()))
  finally:
    subprocess.run(["umount", str(disk)], capture_output=True)


# --- round three: nothing lost, nothing stale, one clear line -------------------------------

def _finite(state) -> bool:
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


def test_a_run_that_skips_updates_stops_once_it_diverges_and_saves_no_nan(small_splits,
                                                                          tmp_path):
  """skip_nonfinite_updates drops NaN/inf updates, but optax gives up after 5 in a row and
  applies them: from then on the state is NaN, and the run stops as the plain path does."""
  skipping = {"optimizer.skip_nonfinite_updates": True, "parallelism.steps_per_call": 1,
              "checkpoints.keep": 10}
  train.train_and_evaluate(tiny_config(skipping, run=dict(num_train_steps=20)), str(tmp_path))
  rows_before = (tmp_path / "metrics.jsonl").read_text()
  result_before = (tmp_path / "result.json").read_text()
  with pytest.raises(errors.NonFiniteError, match="the model diverged"):
    train.train_and_evaluate(tiny_config(skipping, run=dict(num_train_steps=50),
                                         optimizer=dict(learning_rate=1e30)), str(tmp_path))
  config = tiny_config(skipping)
  kept = checkpointing.complete_steps(tmp_path / "checkpoints")
  assert 20 in kept and max(kept) < 50, kept  # the good one kept, the run stopped short
  for step in kept:
    assert _finite(_restore(tmp_path, config, step=step)), step
  assert "NaN" not in (tmp_path / "metrics.jsonl").read_text().replace(rows_before, "")
  assert (tmp_path / "result.json").read_text() == result_before  # not "completed"


def test_skipped_updates_count_only_what_optax_dropped(monkeypatch):
  """A gradient whose global norm overflows, each element finite, is applied by
  optax.apply_if_finite (an elementwise test): it is not counted as skipped."""
  monkeypatch.setattr(steps.optax, "global_norm", lambda tree: jnp.float32(jnp.inf))
  config = tiny_config(optimizer=dict(skip_nonfinite_updates=True))
  state = state_lib.initial_state(config)
  images, labels = synthetic_arrays(16)
  new, metrics = jax.jit(steps.train_step)(state, {"image": images, "label": labels})
  assert int(metrics["nonfinite"]) == 0 and int(metrics["count"]) == 16
  assert int(new.opt_state.notfinite_count) == 0


def test_the_non_finite_stop_advises_what_the_workdir_accepts(small_splits, tmp_path):
  train.train_and_evaluate(tiny_config(run=dict(num_train_steps=12)), str(tmp_path))
  with pytest.raises(errors.NonFiniteError) as error:
    train.train_and_evaluate(tiny_config(run=dict(num_train_steps=24),
                                         optimizer=dict(learning_rate=1e30),
                                         parallelism=dict(steps_per_call=1)), str(tmp_path))
  assert "new --workdir" in str(error.value)  # skipping changes the optimizer state
  with pytest.raises(checkpointing.CheckpointError):  # as the advice says: not this workdir
    train.train_and_evaluate(tiny_config(run=dict(num_train_steps=24),
                                         optimizer=dict(skip_nonfinite_updates=True)),
                             str(tmp_path))


def test_a_workdir_holding_only_the_projects_temporary_files_is_accepted(small_splits,
                                                                         tmp_path):
  """What a kill during the first config.json write leaves: its temporary file, the lock and
  run_info.jsonl."""
  (tmp_path / ".config.json.tmp").write_text('{"batch_si')
  (tmp_path / ".lock").write_text("")
  (tmp_path / "run_info.jsonl").write_text('{"time": "x"}\n')
  train.train_and_evaluate(tiny_config(run=dict(num_train_steps=6)), str(tmp_path))
  assert json.loads((tmp_path / "result.json").read_text())["step"] == 6


def test_a_config_field_given_without_its_prefix_is_named_with_it(tmp_path):
  result = _main("--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
                 "--num_train_steps=20")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "--config.run.num_train_steps=20" in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_unusable_compilation_cache_is_said_to_be_off(synthetic_tfds, tmp_path, kind):
  cache = tmp_path / "cache"
  if kind == "file":
    cache.write_text("not a folder")
  else:
    cache.mkdir()
    cache.chmod(0o500)
    if os.access(cache, os.W_OK):  # (root writes anywhere: nothing to test)
      pytest.skip("this user can write to a read-only folder")
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  result = subprocess.run(
      [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py", "--workdir",
       str(tmp_path / "w"), f"--config.data.tfds_dir={synthetic_tfds['data_dir']}",
       "--config.run.num_train_steps=2", f"--config.parallelism.compilation_cache_dir={cache}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"compilation cache: off ({cache} is not a writable folder)" in result.stderr
  assert "UserWarning" not in result.stderr


@pytest.mark.parametrize("window,message", [((5, 5), "first < last"),
                                            ((100, 200), "the run ends at step 20")])
def test_a_profile_window_that_can_trace_nothing_is_refused(small_splits, tmp_path, window,
                                                            message):
  with pytest.raises(errors.ConfigError, match=message):
    train.train_and_evaluate(tiny_config(run=dict(num_train_steps=20),
                                         logging=dict(profile_steps=window)),
                             str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_run_that_reached_its_target_is_finished_when_its_command_runs_again(small_splits,
                                                                              tmp_path,
                                                                              caplog):
  config = tiny_config(run=dict(num_epochs=4), eval=dict(stop_at_accuracy=0.01),
                       checkpoints=dict(every_steps=0))
  train.train_and_evaluate(config, str(tmp_path))
  result = (tmp_path / "result.json").read_text()
  assert json.loads(result)["stop_reason"] == "target_reached"
  before = _snapshot(tmp_path)
  caplog.set_level("WARNING")
  train.train_and_evaluate(config, str(tmp_path))  # a requeued job: the same command
  assert "already finished at step 12 of 48 (stop_at_accuracy reached)" in caplog.text
  assert (tmp_path / "result.json").read_text() == result
  assert {k: v for k, v in _snapshot(tmp_path).items() if "run_info" not in k} == \
      {k: v for k, v in before.items() if "run_info" not in k}
  higher = tiny_config(run=dict(num_epochs=4), eval=dict(stop_at_accuracy=0.999),
                       checkpoints=dict(every_steps=0))
  train.train_and_evaluate(higher, str(tmp_path))  # a higher target trains on
  assert json.loads((tmp_path / "result.json").read_text())["step"] == 48


@pytest.mark.parametrize("damage", ["missing", "stale", "cut short"])
def test_a_finished_runs_missing_or_stale_result_is_rebuilt(trained_workdir, damage, caplog):
  """A kill between the final checkpoint and result.json leaves it missing (or a resumed
  run's old one); a rerun of the command rebuilds it from the last metrics row."""
  config, tmp_path = tiny_config(run=dict(num_epochs=2)), trained_workdir
  path = tmp_path / "result.json"
  expected = json.loads(path.read_text())
  if damage == "missing":
    path.unlink()
  elif damage == "stale":
    path.write_text(json.dumps({**expected, "step": 12}))
  else:
    path.write_text(path.read_text()[:40])
  caplog.set_level("WARNING")
  train.train_and_evaluate(config, str(tmp_path))
  assert "result.json was missing or stale: rebuilt from metrics.jsonl" in caplog.text
  rebuilt = json.loads(path.read_text())
  assert rebuilt["step"] == 24 and rebuilt["stop_reason"] == "completed" and rebuilt["rebuilt"]
  assert rebuilt["final"] == pytest.approx(expected["final"])
  assert rebuilt["best_by_val"] == expected["best_by_val"]


@pytest.mark.parametrize("damage,train_says,report_says", [
    ("config is a list", "config.json is damaged", "config.json is damaged"),
    ("run_info without argv", None, None),
    ("metrics row without train_accuracy", None, None),
    ("stray config copy", None, None),
    ("checkpoints is a file", "checkpoints is a file, where the run keeps its checkpoints",
     "has no checkpoint in"),
])
def test_damaged_or_stray_run_files_get_one_line_not_a_traceback(trained_workdir, damage,
                                                                 train_says, report_says,
                                                                 caplog):
  """The run (resumed for one more epoch) and the report on a workdir with a damaged or stray
  file: the one-line error each names (FmnistError, which main and the report print as one
  line), or they do their work (a skipped row said in a warning), never another exception."""
  from fmnist_jax import report
  tmp_path = trained_workdir
  if damage == "config is a list":
    (tmp_path / "config.json").write_text("[1, 2]")
  elif damage == "run_info without argv":
    (tmp_path / "run_info.jsonl").write_text('{"time": "2026-12-01"}\n')
  elif damage == "metrics row without train_accuracy":
    with open(tmp_path / "metrics.jsonl", "a") as f:
      f.write('{"step": 30, "epoch": 2.5, "test_accuracy": 0.5}\n')
  elif damage == "stray config copy":
    (tmp_path / "config.step5 (copy).json").write_text("{}")
  else:
    import shutil
    shutil.rmtree(tmp_path / "checkpoints")
    (tmp_path / "checkpoints").write_text("not a folder")
  for action, says in ((lambda: train.train_and_evaluate(tiny_config(run=dict(num_epochs=3)),
                                                         str(tmp_path)), train_says),
                       (lambda: report.write_report(str(tmp_path)), report_says)):
    if says is None:
      action()  # (works: the run trains its epoch, the report is written)
      continue
    with pytest.raises(errors.FmnistError) as raised:
      action()
    assert says in str(raised.value) and "\n" not in str(raised.value).strip(), raised.value
  if train_says is None:
    assert json.loads((tmp_path / "result.json").read_text())["step"] == 36
    assert (tmp_path / "report" / "report.md").is_file()
  if damage == "metrics row without train_accuracy":
    assert "lacks train_loss, train_accuracy, test_loss and is skipped" in caplog.text


@pytest.mark.parametrize("case", ["compare: missing run", "compare: --out is a file",
                                  "throughput: --json X.md", "throughput: --json DIR",
                                  "throughput: --batch-sizes 0",
                                  "throughput: damaged --config-json",
                                  "dataset: --prepare into a file",
                                  "time_to_accuracy: a flag it does not have",
                                  "time_to_accuracy: --target 1.5",
                                  "speedrun_search: --choose fastest=0.9",
                                  "speedrun_search: --only a misspelt variant",
                                  "speedrun_search: a config without VARIANTS",
                                  "matmul_dtypes: --calls 0", "trace_gaps: --top -1",
                                  "trace_gaps: --json into a missing folder"])
def test_tools_refuse_bad_arguments_in_one_line_before_they_work(tmp_path, case):
  (tmp_path / "file").write_text("not a folder")
  (tmp_path / "damaged.json").write_text('{"batch_size": ')
  command, message = {
      "compare: missing run": (["fmnist_jax.compare", str(tmp_path / "nope"), "--out",
                                str(tmp_path / "out")], "no such run folder"),
      "compare: --out is a file": (["fmnist_jax.compare", str(tmp_path), "--out",
                                    str(tmp_path / "file")], "is a file"),
      "throughput: --json X.md": (["benchmarks.throughput", "--json", str(tmp_path / "x.md")],
                                  "name a .json file"),
      "throughput: --json DIR": (["benchmarks.throughput", "--json", str(tmp_path)],
                                 "name a .json file"),
      "throughput: --batch-sizes 0": (["benchmarks.throughput", "--json",
                                       str(tmp_path / "x.json"), "--batch-sizes", "0"],
                                      "--batch-sizes must be positive"),
      "throughput: damaged --config-json": (["benchmarks.throughput", "--json",
                                             str(tmp_path / "x.json"), "--config-json",
                                             str(tmp_path / "damaged.json")],
                                            "cannot read the config"),
      "dataset: --prepare into a file": (["fmnist_jax.dataset", "--prepare", "--data_dir",
                                          str(tmp_path / "file" / "tfds")], "not a folder"),
      "time_to_accuracy: a flag it does not have": (
          ["benchmarks.time_to_accuracy", "--config", "configs/tiny.py", "--json",
           str(tmp_path / "x.json"), "--workdir", str(tmp_path / "out")],
          "unrecognized arguments: --workdir"),
      "time_to_accuracy: --target 1.5": (
          ["benchmarks.time_to_accuracy", "--config", "configs/tiny.py", "--json",
           str(tmp_path / "x.json"), "--target", "1.5"], "--target 1.5: an accuracy in (0, 1]"),
      "speedrun_search: --choose fastest=0.9": (
          ["benchmarks.speedrun_search", "--json", str(tmp_path / "x.json"), "--choose",
           "fastest=0.9"], "--choose fastest=0.9: 'best', or 'fastest:ACCURACY'"),
      "speedrun_search: --only a misspelt variant": (
          ["benchmarks.speedrun_search", "--json", str(tmp_path / "x.json"), "--only",
           "b512_e2"], "--only b512_e2: not a variant of configs/speedrun.py"),
      "speedrun_search: a config without VARIANTS": (
          ["benchmarks.speedrun_search", "--json", str(tmp_path / "x.json"), "--config",
           "configs/default.py"], "defines no VARIANTS to search"),
      "matmul_dtypes: --calls 0": (["benchmarks.matmul_dtypes", "--json",
                                    str(tmp_path / "x.json"), "--calls", "0"],
                                   "--calls and --repeats must be at least 1"),
      "trace_gaps: --top -1": (["fmnist_jax.trace_gaps", str(tmp_path), "--top", "-1"],
                               "--top -1: give how many gaps to list"),
      "trace_gaps: --json into a missing folder": (
          ["fmnist_jax.trace_gaps", str(tmp_path), "--json", str(tmp_path / "no" / "x.json")],
          "does not exist; make it"),
  }[case]
  start = time.time()
  result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
  assert not (tmp_path / "x.json").exists() and time.time() - start < 60  # nothing measured


def test_compare_leaves_out_a_damaged_reports_calibration(small_splits, tmp_path):
  from fmnist_jax import compare
  train.train_and_evaluate(tiny_config(run=dict(num_train_steps=6)), str(tmp_path / "run"))
  (tmp_path / "run" / "report").mkdir()
  (tmp_path / "run" / "report" / "metrics.json").write_text('{"checkpoints": ')
  compare.compare([str(tmp_path / "run")], str(tmp_path / "out"))
  summary = json.loads((tmp_path / "out" / "compare.json").read_text())
  assert summary["run"]["last_checkpoint_test_ece"] is None


def test_an_explicit_idx_dir_that_is_not_read_is_said_so(synthetic_tfds, tmp_path, caplog):
  """With tfds' copy already prepared, the IDX files are not read: a named idx_dir (here one
  that does not exist) gets a line saying it was not used."""
  caplog.set_level("WARNING")
  config = tiny_config(data=dict(tfds_dir=synthetic_tfds["data_dir"],
                                 idx_dir=str(tmp_path / "nonexistent")),
                       run=dict(num_train_steps=2))
  train.train_and_evaluate(config, str(tmp_path / "w"))
  assert f"idx_dir='{tmp_path / 'nonexistent'}' is not used: tfds' copy" in caplog.text


@pytest.mark.slow
def test_ctrl_c_twice_while_the_first_program_compiles_ends_in_one_line(synthetic_tfds,
                                                                        tmp_path):
  """Two Ctrl-C 50 ms apart as the train program compiles (no compilation cache): the run
  either saves (the two were taken for one) or aborts, in one line; never a crash."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  command = [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py",
             "--workdir", str(tmp_path / "w"),
             f"--config.data.tfds_dir={synthetic_tfds['data_dir']}",
             "--config.parallelism.compilation_cache_dir=", "--config.run.num_epochs=50"]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env)
  lines = []
  for line in process.stderr:
    lines.append(line)
    if "steps/epoch" in line:  # set up: the first program compiles next
      break
  time.sleep(0.3)
  process.send_signal(signal.SIGINT)
  time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  stderr = "".join(lines) + process.communicate(timeout=300)[1]
  assert process.returncode in (1, preemption.Preempted.exit_code), stderr[-3000:]
  assert "Fatal Python error" not in stderr and "Traceback" not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert "aborted (Ctrl-C)" in last or "checkpoint saved at step" in last, last


_LONG_CALL = """
import os, signal, sys, time
sys.path.insert(0, ".")
from fmnist_jax import preemption
watch = preemption.PreemptionWatch(lambda calls: False)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(120)  # a call that does not end before the grace is over
"""


def test_a_sigterm_during_a_call_longer_than_its_grace_exits_in_one_line():
  env = {**os.environ, "FMNIST_JAX_SIGTERM_GRACE_SECONDS": "0.5"}
  start = time.monotonic()
  result = subprocess.run([sys.executable, "-c", _LONG_CALL], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
  assert time.monotonic() - start < 30 and result.returncode == 75, result.stderr[-2000:]
  assert "did not end within 0.5 s, so no new checkpoint was saved" in result.stderr
  assert "Traceback" not in result.stderr


def test_run_files_are_strict_json_with_null_for_nan_and_read_back(tmp_path):
  """metrics.jsonl and result.json wrote a bare NaN, which jq, JavaScript and strict parsers
  refuse: a NaN or inf is written null, and the package reads such rows."""
  def strict(text):
    def refuse(constant):
      raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)
  row = {"epoch": 1.0, "train_loss": float("nan"), "train_accuracy": 0.5,
         "test_loss": float("inf"), "test_accuracy": 0.25, "members": [float("-inf")]}
  writer = workdir_lib.MetricsWriter(tmp_path)
  writer.write_scalars(10, row)
  writer.close()
  (read,) = workdir_lib.read_metrics(tmp_path)
  assert strict((tmp_path / "metrics.jsonl").read_text())["train_loss"] is None
  assert read["train_loss"] is None and read["test_accuracy"] == 0.25
  workdir_lib.write_result(tmp_path, final=row, step=10)
  result = strict((tmp_path / "result.json").read_text())
  assert result["final"]["test_loss"] is None and result["final"]["members"] == [None]
