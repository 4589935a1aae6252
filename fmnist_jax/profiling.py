"""A jax.profiler trace of a window of train steps (config.logging.profile_steps), for
ui.perfetto.dev and TensorBoard's Profile tab (with xprof installed).

    python -m fmnist_jax.main ... --config.logging.profile_steps="(1000, 1500)"
    python -m fmnist_jax.trace_gaps WORKDIR   # where the device waited, and for what

The trace starts once the host has dispatched the call that reaches step `first` and stops
once the device has finished the call that reaches step `last` (the host runs ahead of the
device: stopping waits for it, so the window's device work is all in the trace). It is written
to WORKDIR/plugins/profile/<time>/ (where `tensorboard --logdir WORKDIR` looks), with a
perfetto_trace.json.gz beside XLA's own files. Python's function calls are not traced: they
would slow the very host loop the trace is taken to look at; the loop's phases (train calls,
evaluation, checkpoints, ...) are TraceAnnotations (progress.Progress.timed) instead. Writing the
trace takes seconds (tens on a CPU, where XLA's threads log every op): progress lines and the
ETA leave them out, as they leave out compilation, but the run's wall time counts them
(result.json's host_seconds["profiler"] says how many), so take timings from a run without a
trace.
"""

from __future__ import annotations

import contextlib
import pathlib
import time

import jax
from absl import logging

from fmnist_jax.errors import ConfigError


def check_window(steps: tuple[int, int], total_steps: int) -> None:
  """A ConfigError for a window that starts after the run's last step."""
  first, last = (int(s) for s in steps)
  if last and first >= total_steps:
    raise ConfigError(f"logging.profile_steps=({first}, {last}) traces nothing: the run ends "
                      f"at step {total_steps}. Pick a window inside it, e.g. ({total_steps // 4}, "
                      f"{total_steps // 2}), or (0, 0) for none.")


class StepProfiler:
  """Traces the train steps from `first` to `last` on this process ((0, 0): nothing)."""

  def __init__(self, workdir: pathlib.Path | str, steps: tuple[int, int],
               paused=contextlib.nullcontext):
    self.workdir = pathlib.Path(workdir)
    self.first, self.last = (int(s) for s in steps)
    self.tracing = False
    self.done = self.last <= self.first
    self.seconds = 0.0  # spent starting and writing the trace (counted in the run's time)
    self.paused = paused  # (progress.Progress.paused: left out of images/s and the ETA)

  def after_call(self, step: int, outputs=None) -> None:
    """Called once each train call is dispatched, `step` the step it reaches; `outputs`: what
    that call returns (waited for before the trace stops). The trace starts after the call
    that reaches `first` and stops after the one that reaches `last`: a window that one call
    spans, or that a resumed run has passed, traces nothing."""
    if self.done or step < self.first:
      return
    if self.tracing:
      self.traced = (self.traced[0], step)
      if step >= self.last:
        self.stop(outputs)
    elif step >= self.last:
      self.done = True
    else:
      start = time.perf_counter()
      options = jax.profiler.ProfileOptions()
      options.python_tracer_level = 0  # (see the module's docstring)
      with self.paused():
        jax.profiler.start_trace(str(self.workdir), create_perfetto_trace=True,
                                 profiler_options=options)
      self.tracing, self.traced = True, (step, step)
      self.seconds += time.perf_counter() - start

  def stop(self, outputs=None) -> None:
    """Waits for `outputs` on the device, then writes the trace (once)."""
    if not self.tracing:
      return
    self.tracing, self.done = False, True
    jax.block_until_ready(outputs)
    start = time.perf_counter()
    with self.paused():
      jax.profiler.stop_trace()
    self.seconds += time.perf_counter() - start
    logging.info("profile of the train steps %d-%d written to %s/plugins/profile/ in %.1f s "
                 "(python -m fmnist_jax.trace_gaps %s: where the device waited)",
                 self.traced[0] + 1, self.traced[1], self.workdir, self.seconds, self.workdir)
