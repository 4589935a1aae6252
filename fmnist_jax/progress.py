"""The run's clock and its console: training seconds with compilation and trace writing left
out, host syncs, the host's seconds per phase, progress lines with images/s and the ETA, and the
run's last line. One object per run, modelled on big_vision's `chrono`. And `Deferred`: the
host work that waits until the device has passed a step."""

from __future__ import annotations

import collections
import contextlib
import os
import time

import jax
from absl import logging

from fmnist_jax import steps


class CompileTimer:
  """Seconds spent tracing, lowering and compiling in XLA (from jax.monitoring's events), the
  number of XLA compilations (a persistent-cache hit is none) and how often each function was
  traced (one train program per run: {'train_call': 1})."""
  EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")

  def __init__(self):
    self.seconds, self.compilations = 0.0, 0
    self.traced = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    if event in self.EVENTS:
      self.seconds += duration
      self.compilations += event == self.EVENTS[-1]
    if event == self.EVENTS[0]:
      self.traced[str(kwargs.get("fun_name", "?"))] += 1

  def close(self):
    jax.monitoring.unregister_event_duration_listener(self._listen)


def format_flops(flops_per_second: float) -> str:
  for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
    if flops_per_second >= scale:
      return f"{flops_per_second / scale:.2f} {unit}"
  return f"{flops_per_second / 1e6:.2f} MFLOP/s"


def format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def process_start_time() -> float | None:
  """time.time() when this process started (Linux: /proc, to 1/100 s), else None."""
  try:
    with open("/proc/self/stat") as f:
      ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22: start, in clock ticks
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
  except (OSError, ValueError, IndexError):
    return None


class Startup:
  """Seconds from the process's start to its first train call dispatched, by phase: imports
  (the interpreter, the modules, JAX's backend), data (checks, reading and placing the
  splits, the workdir), state (the initial or restored state, the checkpointer, the loop's
  set-up), compile (compiling or loading the train program) and first_call (the rest of the
  first call). Without /proc, imports count from this object's creation."""
  PHASES = ("imports", "data", "state", "compile", "first_call")

  def __init__(self):
    self.seconds = {}
    self.last = process_start_time() or time.time()
    self.mark("imports")

  def mark(self, phase: str) -> None:
    """Ends `phase` now."""
    now = time.time()
    self.seconds[phase], self.last = now - self.last, now

  def first_call(self, compile_seconds: float) -> None:
    """Ends the last two phases once the first call returns: `compile_seconds` of the time
    since the state was ready went to XLA (or to loading from its cache)."""
    now = time.time()
    self.seconds["compile"] = min(compile_seconds, now - self.last)
    self.seconds["first_call"], self.last = now - self.last - self.seconds["compile"], now

  def record(self) -> dict:
    return {**{k: round(v, 3) for k, v in self.seconds.items()},
            "total": round(sum(self.seconds.values()), 3)}


class Progress:
  """Where the run is in time. `excluded` seconds (compiling, writing a trace) are left out of
  images/s and the ETA; the ETA runs at the whole run's pace, evaluations included."""

  def __init__(self, start_step: int, total_steps: int, batch_size: int, to_host, *,
               flops_per_image: float = 0.0, peak_flops: float | None = None,
               show: bool = True, clock=time.perf_counter):
    self.start_step, self.total_steps, self.batch_size = start_step, total_steps, batch_size
    self.to_host, self.flops_per_image, self.peak_flops = to_host, flops_per_image, peak_flops
    self.show, self.clock = show, clock
    self.startup: Startup | None = None  # the loop's, when it records its start-up phases
    self.start = clock()
    self.compile = CompileTimer()
    self.paused_seconds, self.ready = 0.0, False
    self.host_syncs = 0
    self.host_seconds = collections.defaultdict(float)
    self.interval = (start_step, self.start, 0.0)  # (step, time, excluded) of the last line

  @property
  def excluded(self) -> float:
    return self.compile.seconds + self.paused_seconds

  def elapsed(self) -> float:
    """Seconds since the loop started, all of them."""
    return self.clock() - self.start

  @contextlib.contextmanager
  def timed(self, phase: str):
    """Host seconds per phase of the loop (result.json's host_seconds), named in a trace."""
    start = self.clock()
    try:
      with jax.profiler.TraceAnnotation(phase):
        yield
    finally:
      self.host_seconds[phase] += self.clock() - start

  @contextlib.contextmanager
  def paused(self):
    """Seconds left out of images/s and the ETA, as compiling is (a trace's writing)."""
    start = self.clock()
    try:
      yield
    finally:
      self.paused_seconds += self.clock() - start

  def fetch(self, tree):
    """Device values to the host: each call is one host sync."""
    self.host_syncs += 1
    return self.to_host(tree)

  def restart_interval(self, step: int) -> None:
    """The next line's images/s counts from here (an epoch's end, once its evaluation is in),
    unless a line past `step` was printed already."""
    if step >= self.interval[0]:
      self.interval = (step, self.clock(), self.excluded)

  def line(self, step: int, epoch: float, sums) -> dict:
    """Logs a progress line for `step` (at `epoch`, in epochs: as the evaluation lines count
    them) from the epoch's summed train metrics (host values); returns its scalars."""
    loss, accuracy = steps.summarize(sums)
    now, excluded = self.clock(), self.excluded
    last_step, last_time, last_excluded = self.interval
    self.interval = (step, now, excluded)
    seconds = max(now - last_time - (excluded - last_excluded), 1e-9)
    images_per_second = (step - last_step) * self.batch_size / seconds
    pace = (step - self.start_step) / max(now - self.start - excluded, 1e-9)
    eta = (self.total_steps - step) / max(pace, 1e-9)
    flops = images_per_second * self.flops_per_image
    peak = f" ({100 * flops / self.peak_flops:.1f}% of peak)" if self.peak_flops else ""
    if self.show:  # (no ETA on the last line: nothing is left)
      logging.info("step %d/%d epoch %.2f | train loss %.4f acc %.4f | %s img/s | %s%s%s",
                   step, self.total_steps, epoch, loss, accuracy,
                   f"{images_per_second:,.0f}",
                   f"ETA {format_seconds(eta)} | " if step < self.total_steps else "",
                   format_flops(flops), peak)
    return {"train_loss": loss, "train_accuracy": accuracy,
            "images_per_second": images_per_second}

  def program_ready(self) -> None:
    """Says, once, how long compiling (or loading) the train program took."""
    if self.ready:
      return
    self.ready = True
    if self.startup:
      self.startup.first_call(self.compile.seconds)
    logging.info("train program ready: %.1f s of compiling, left out of img/s and the ETA "
                 "(%d programs compiled by XLA; the others came from the compilation cache)",
                 self.compile.seconds, self.compile.compilations)

  def evaluation_line(self, step: int, scalars: dict) -> None:
    logging.info("epoch %.2f step %d | %s", scalars["epoch"], step,
                 " ".join(f"{k} {figure(v)}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in scalars.items() if k != "epoch"))

  def record(self, step: int, steps_per_epoch: int) -> dict:
    """What result.json says of the run's time."""
    epochs = (step - self.start_step) / steps_per_epoch
    return {"train_seconds": self.elapsed(), "compile_seconds": self.compile.seconds,
            "compilations": self.compile.compilations, "traced": dict(self.compile.traced),
            "host_syncs": self.host_syncs,  # (per epoch: only where a whole one was trained)
            "host_syncs_per_epoch": self.host_syncs / epochs if epochs >= 1 else None,
            "host_seconds": dict(self.host_seconds),
            **({"startup_seconds": self.startup.record()} if self.startup else {})}

  def summary(self, stop_reason: str, step: int, final: dict, workdir) -> None:
    """The last line of a run: where it ended, its metrics, its time, its files."""
    seconds, compiling = self.elapsed(), self.compile.seconds
    trained = (step - self.start_step) * self.batch_size
    split = "test" if "test_accuracy" in final else "val"
    logging.info(
        "done (%s) at step %d, epoch %.2f: %s accuracy %.4f, loss %s | %.1f s (%.1f s "
        "compiling), %s img/s | %s: metrics.jsonl, result.json, checkpoints/", stop_reason,
        step, final["epoch"], split, final[f"{split}_accuracy"], figure(final[f"{split}_loss"]),
        seconds, compiling, f"{trained / max(seconds - compiling, 1e-9):,.0f}", workdir)

  def close(self) -> None:
    self.compile.close()


def figure(value: float) -> str:
  """A metric for the console: 4 decimals, or 4 significant digits where it is huge (a
  diverged loss is 1.18e+34, not 35 digits)."""
  return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


class Deferred:
  """Host work waiting on the device: (due step, task) pairs, each run in the order added
  once the loop has dispatched the call that reaches its step."""
  def __init__(self):
    self.tasks = []

  def add(self, due_step: int, task) -> None:
    self.tasks.append((due_step, task))

  def run(self, step: float = float("inf")) -> None:
    """Runs the tasks due by `step` (all by default), also those they add."""
    while (due := next((t for t in self.tasks if t[0] <= step), None)) is not None:
      self.tasks.remove(due)
      due[1]()


def crossed(step: int, num_steps: int, every: int) -> bool:
  """Whether the last call (num_steps steps, ending at `step`) passed a multiple of `every`."""
  return bool(every) and step // every != (step - num_steps) // every
