"""Multi-device (8 simulated CPU devices) and multi-process (2 local processes) training."""

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from fmnist_jax import checkpointing, preemption
from test_main import _final_params, _metrics

TESTS = os.path.dirname(__file__)


def _devices_env(count):
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}",
          "PYTHONPATH": os.pathsep.join([TESTS, str(ROOT)])}


@pytest.fixture(scope="module")
def eight_devices():
  result = subprocess.run([sys.executable, os.path.join(TESTS, "multidevice_worker.py")],
                          capture_output=True, text=True, timeout=900, env=_devices_env(8))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout)


def _assert_params_close(a, b, rtol=2e-5, atol=2e-6):
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.slow
def test_jit_on_8_devices_equals_jit_on_1_with_dropout_augmentation_microbatches(eight_devices):
  assert eight_devices["device_count"] == 8
  params1, losses1 = eight_devices["jit1_dropout"]
  params8, losses8 = eight_devices["jit8_dropout"]
  _assert_params_close(params1, params8)
  np.testing.assert_allclose(losses1, losses8, rtol=1e-5)


@pytest.mark.slow
def test_pmap_on_8_devices_equals_jit_on_8_without_dropout(eight_devices):
  _assert_params_close(eight_devices["pmap8"][0], eight_devices["jit8"][0])
  np.testing.assert_allclose(eight_devices["pmap8"][1], eight_devices["jit8"][1], rtol=1e-5)


@pytest.mark.slow
def test_pmap_dropout_trains_and_differs_from_jit_masks(eight_devices):
  params, losses = eight_devices["pmap8_dropout"]
  assert np.all(np.isfinite(losses))
  assert not np.allclose(np.asarray(params[0]), np.asarray(eight_devices["jit8_dropout"][0][0]))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_eval_counts_every_example_on_1_and_8_devices(eight_devices, mode):
  one, eight = eight_devices[f"eval_{mode}1"], eight_devices[f"eval_{mode}8"]
  assert one["count"] == eight["count"] == 75
  np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-6)
  assert one["accuracy"] == eight["accuracy"]


@pytest.mark.slow
def test_batch_not_divisible_by_devices_is_a_clear_error(eight_devices):
  assert eight_devices["indivisible_error"].startswith(
      "run.batch_size 100 is not divisible by the 8 devices")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_two_processes(workdir, data_dir, *overrides, env=None):
  port = _free_port()
  common = [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py",
            "--workdir", str(workdir), f"--config.data.tfds_dir={data_dir}",
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", *overrides]
  return [subprocess.Popen(common + [f"--process_id={i}"], cwd=ROOT,
                           env={**_devices_env(4), **(env or {})},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(2)]


def _two_processes(workdir, data_dir, *overrides):
  procs = _start_two_processes(workdir, data_dir, *overrides)
  outputs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-4000:]
  return [err for _, err in outputs]


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_both_at_the_same_step(synthetic_tfds, tmp_path):
  """JAX's preemption sync service: a notice to process 1 alone stops both processes at one
  agreed step, with one checkpoint holding it; the same command then resumes from there."""
  overrides = ["--config.run.num_train_steps=40", "--config.parallelism.steps_per_call=1",
               "--config.checkpoints.every_steps=10", "--config.checkpoints.keep=5"]
  # Both processes wait 10 s after their first checkpoint: the notice lands mid-run.
  procs = _start_two_processes(tmp_path, synthetic_tfds["data_dir"], *overrides,
                               env={preemption.PAUSE_VARIABLE: "10"})
  _after_first_checkpoint(procs, tmp_path)
  procs[1].send_signal(signal.SIGTERM)
  logs = [p.communicate(timeout=600)[1] for p in procs]
  assert [p.returncode for p in procs] == [preemption.Preempted.exit_code] * 2, logs[0][-3000:]
  steps = [int(re.search(r"checkpoint saved at step (\d+)", log).group(1)) for log in logs]
  assert steps[0] == steps[1] and 0 < steps[0] < 40
  step, _ = _final_params(tmp_path, tiny_config())
  assert step == steps[0]  # the agreed step, not an older periodic save
  # The same command resumes from the saved step and finishes.
  logs = _two_processes(tmp_path, synthetic_tfds["data_dir"], *overrides[:1],
                        *overrides[2:])
  starts = [json.loads(line)["start_step"]
            for line in (tmp_path / "run_info.jsonl").read_text().splitlines()]
  assert starts == [0, steps[0]]
  assert _metrics(tmp_path)[-1]["step"] == 40


def _after_first_checkpoint(procs, workdir):
  checkpoints = workdir / "checkpoints"
  deadline = time.time() + 600
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if checkpoints.is_dir() and any(d.name.isdigit() for d in checkpoints.iterdir()):
      return
    time.sleep(0.05)
  raise AssertionError("the run ended before it could be interrupted")


@pytest.mark.slow
def test_a_killed_process_stops_the_other_in_one_line_within_its_timeout(synthetic_tfds,
                                                                         tmp_path):
  """kill -9 of process 1: process 0 ends within --peer_timeout with one line naming it and
  the last checkpoint (not a Gloo traceback and an abort 90 s later), its lock released."""
  procs = _start_two_processes(tmp_path, synthetic_tfds["data_dir"],
                               "--config.run.num_train_steps=40", "--peer_timeout=8",
                               "--config.checkpoints.every_steps=10",
                               env={preemption.PAUSE_VARIABLE: "3"})
  _after_first_checkpoint(procs, tmp_path)
  procs[1].kill()
  start = time.time()
  _, err = procs[0].communicate(timeout=120)
  seconds = time.time() - start
  step = checkpointing.complete_steps(tmp_path / "checkpoints")[-1]
  assert procs[0].returncode == 1 and seconds < 60, (seconds, err[-3000:])
  assert (f"process 1 of 2 stopped answering for 8 s (killed, or its host lost); the last "
          f"checkpoint is step {step}") in err, err[-3000:]
  assert "Traceback" not in err and "Check failure" not in err, err[-3000:]
  with open(tmp_path / ".lock", "w") as f:  # (released: taken here at once)
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.slow
def test_sigterm_ends_a_process_waiting_in_a_collective_within_its_grace(synthetic_tfds,
                                                                         tmp_path):
  """Process 1 frozen (SIGSTOP): process 0 waits in a collective, where no signal is seen; a
  SIGTERM still ends it within the grace, in one line."""
  procs = _start_two_processes(tmp_path, synthetic_tfds["data_dir"],
                               "--config.run.num_train_steps=40", "--peer_timeout=600",
                               "--config.checkpoints.every_steps=10",
                               env={preemption.PAUSE_VARIABLE: "3",
                                    preemption.GRACE_VARIABLE: "4"})
  try:
    _after_first_checkpoint(procs, tmp_path)
    procs[1].send_signal(signal.SIGSTOP)
    time.sleep(5)  # (process 0 past its pause, in the next step's collective)
    procs[0].send_signal(signal.SIGTERM)
    start = time.time()
    _, err = procs[0].communicate(timeout=120)
    seconds = time.time() - start
  finally:
    procs[1].kill()
    procs[1].communicate()
  assert procs[0].returncode == preemption.Preempted.exit_code and seconds < 30, err[-3000:]
  assert "did not end within 4 s" in err and "Traceback" not in err, err[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("mode,input_mode", [("jit", "device"), ("pmap", "tfds")])
def test_two_processes_train_and_the_checkpoint_restores_on_one_device(
    synthetic_tfds, tmp_path, mode, input_mode):
  logs = _two_processes(tmp_path, synthetic_tfds["data_dir"], "--config.run.num_train_steps=6",
                        f"--config.parallelism.mode={mode}",
                        f"--config.data.input_mode={input_mode}",
                        "--config.checkpoints.every_steps=3")
  assert "JAX process 1/2, 4 local devices" in logs[1]
  assert "Parallelism(%s, 8 devices, 2 processes)" % mode in logs[0]
  checksums = [re.search(r"parameter checksum (\S+)", log).group(1) for log in logs]
  assert checksums[0] == checksums[1]
  rows = _metrics(tmp_path)  # written by process 0 only: one row per evaluation
  assert [r["step"] for r in rows] == [6]
  assert rows[0]["test_count"] == synthetic_tfds["test_count"]
  # The checkpoint holds global arrays: it restores here, in one process with one device.
  step, params = _final_params(tmp_path, tiny_config())
  assert step == 6 and len(jax.devices()) == 1
  assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(params))


@pytest.mark.slow
@pytest.mark.parametrize("differs,named", [
    (["--config.run.batch_size=32"], "another run.batch_size than process 0"),
    (["--workdir", "OTHER"], "another --workdir than process 0"),
])
def test_processes_started_differently_stop_in_one_line_before_training(
    synthetic_tfds, tmp_path, differs, named):
  """Process 1 with another batch size (both "completed", its loss above ln 10) or another
  workdir (both hung at the first save): every process says which setting differs, and
  nothing trains."""
  port = _free_port()
  common = [sys.executable, "-m", "fmnist_jax.main", "--config", "configs/tiny.py",
            f"--config.data.tfds_dir={synthetic_tfds['data_dir']}",
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
            "--config.run.num_train_steps=4"]
  own = [["--workdir", str(tmp_path / "run")],
         [a.replace("OTHER", str(tmp_path / "other")) for a in differs]
         + (["--workdir", str(tmp_path / "run")] if "--workdir" not in differs else [])]
  procs = [subprocess.Popen(common + own[i] + [f"--process_id={i}"], cwd=ROOT,
                            env=_devices_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  logs = [p.communicate(timeout=300)[1] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 1 and named in log, log[-3000:]
    assert "Traceback" not in log and "train program ready" not in log
  assert not (tmp_path / "run" / "checkpoints").exists()
