"""The run's clock (fmnist_jax.progress) on a fake clock: images/s, the ETA, what is left out."""

import logging
import re

import pytest

from fmnist_jax import progress as progress_lib


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def _progress(clock, start_step=0, total_steps=40):
  return progress_lib.Progress(start_step, total_steps, batch_size=10, to_host=lambda x: x,
                               flops_per_image=1e6, peak_flops=None, clock=clock)


def _sums(steps_done, batch_size=10):
  count = steps_done * batch_size
  return {"loss": 0.5 * count, "correct": count // 2, "count": count, "nonfinite": 0}


def _eta_seconds(caplog) -> int:
  minutes, seconds = re.findall(r"ETA (\d+)m(\d+)s", caplog.text)[-1]
  return int(minutes) * 60 + int(seconds)


def test_the_eta_runs_at_the_whole_runs_pace_evaluations_included(caplog):
  """10 steps in 1 s, then 10 s of evaluation: at step 20 of 40 the ETA is (40-20) steps at
  20 steps / 12 s, not at the train steps' own pace (which would say 2 s)."""
  caplog.set_level(logging.INFO)
  clock = FakeClock()
  progress = _progress(clock)
  clock.now += 1.0
  scalars = progress.line(10, 0, _sums(10))
  assert scalars["images_per_second"] == pytest.approx(100.0)
  assert _eta_seconds(caplog) == 3  # 30 steps at 10 steps/s
  clock.now += 10.0  # the epoch's evaluation
  progress.restart_interval(10)
  clock.now += 1.0
  scalars = progress.line(20, 1, _sums(10))
  assert scalars["images_per_second"] == pytest.approx(100.0)  # the evaluation left out
  assert _eta_seconds(caplog) == 12  # 20 steps at 20 steps / 12 s


def test_compiling_and_paused_seconds_are_left_out_of_images_per_second_and_the_eta(caplog):
  caplog.set_level(logging.INFO)
  clock = FakeClock()
  progress = _progress(clock)
  progress.compile.seconds = 5.0  # as jax.monitoring would report a compilation
  with progress.paused():  # e.g. writing a profile trace
    clock.now += 3.0
  clock.now += 5.0 + 2.0  # the compilation's 5 s and 2 s of steps
  scalars = progress.line(20, 0, _sums(20))
  assert scalars["images_per_second"] == pytest.approx(100.0)
  assert _eta_seconds(caplog) == 2
  progress.close()


def test_host_syncs_and_phases_are_counted_and_recorded():
  clock = FakeClock()
  progress = _progress(clock, start_step=10)
  with progress.timed("evaluation"):
    clock.now += 0.25
    progress.fetch({"x": 1})
  clock.now += 1.0
  record = progress.record(step=30, steps_per_epoch=10)
  assert record["host_syncs"] == 1 and record["host_syncs_per_epoch"] == 0.5
  short = progress.record(step=15, steps_per_epoch=10)  # half an epoch: not extrapolated
  assert short["host_syncs_per_epoch"] is None
  assert record["host_seconds"] == {"evaluation": 0.25}
  assert record["train_seconds"] == pytest.approx(1.25)
  progress.close()


def test_format_seconds():
  assert progress_lib.format_seconds(59) == "0m59s"
  assert progress_lib.format_seconds(3600 + 120) == "1h02m"


def test_a_short_runs_lines_say_what_they_can(caplog):
  """A tiny model's FLOP/s in the unit that shows them; no ETA on the last line."""
  caplog.set_level(logging.INFO)
  clock = FakeClock()
  progress = _progress(clock, total_steps=20)
  clock.now += 1.0
  progress.line(10, 0, _sums(10))  # 100 images/s x 1 MFLOP
  assert "| 100.00 MFLOP/s" in caplog.text and "ETA 0m01s" in caplog.text
  clock.now += 1.0
  progress.line(20, 0, _sums(20))
  assert "ETA" not in caplog.text.splitlines()[-1]
  assert progress_lib.format_flops(2.5e6) == "2.50 MFLOP/s"
  assert progress_lib.format_flops(3e12) == "3.00 TFLOP/s"
  progress.close()


def test_a_diverged_loss_is_printed_in_a_few_digits(caplog):
  caplog.set_level(logging.INFO)
  clock = FakeClock()
  progress = _progress(clock)
  progress.evaluation_line(40, {"epoch": 1.0, "test_loss": 1.18e34, "test_accuracy": 0.1})
  progress.summary("completed", 40, {"epoch": 1.0, "test_loss": 1.18e34,
                                     "test_accuracy": 0.1}, "W")
  assert "test_loss 1.18e+34 " in caplog.text and "loss 1.18e+34 |" in caplog.text
  assert not re.search(r"\d{10}", caplog.text)  # (not 35 digits)
  assert progress_lib.figure(0.23456789) == "0.2346" and progress_lib.figure(float("nan")) == "nan"
