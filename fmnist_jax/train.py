"""The training loop: set up a run, then per epoch: train calls, progress, end of epoch
(evaluation, metrics, checkpoint), stop checks.

The compiled code lives in `steps` (what a step computes) and `parallel` (how it is compiled).
Between compiled calls the host only dispatches: the epoch's metrics are summed on the device,
and a value reaches the host only where it must (a progress line, once the device has reached
it; a NaN check before each save; one fetch of every evaluation).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import gc
import itertools
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from fmnist_jax import checkpointing, hardware, input_pipeline, models, state as state_lib
from fmnist_jax import profiling, steps, workdir as workdir_lib
from fmnist_jax.configuration import validate_config
from fmnist_jax.errors import ConfigError, DiskFullError, NonFiniteError, is_disk_full
from fmnist_jax.parallel import Parallelism


class Preempted(Exception):
  """SIGTERM (or a first Ctrl-C) arrived; the state was checkpointed at `step` and the run
  should exit."""
  exit_code = 75  # EX_TEMPFAIL: "try again", as schedulers that requeue understand it

  def __init__(self, step: int, reason: str = "SIGTERM"):
    what = "interrupted" if reason == "Ctrl-C" else "preempted"
    super().__init__(f"{what} ({reason}): checkpoint saved at step {step}; run the same "
                     "command again to resume")
    self.step = step


class PreemptionWatch:
  """Whether to stop for a preemption notice, at the same step on every process.

  One process: SIGTERM, or a first Ctrl-C (SIGINT), sets a flag, read between compiled calls;
  a second Ctrl-C aborts at once. Several processes: JAX's preemption sync service agrees on a
  call number at which all processes save.
  """

  def __init__(self, ckpt: checkpointing.Checkpointer):
    self.ckpt, self.calls, self.requested, self.reason = ckpt, 0, False, "SIGTERM"
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame):
    if signum == signal.SIGINT:
      self.reason = "Ctrl-C"
      signal.signal(signal.SIGINT, signal.default_int_handler)  # a second one aborts
      logging.warning("Ctrl-C: saving a checkpoint after the current step (Ctrl-C again to "
                      "abort at once; the checkpoints already written stay intact)")
    else:
      logging.warning("SIGTERM received: saving a checkpoint after the current step")
    self.requested = True

  def reached(self) -> bool:
    """Call once after every compiled train call, on every process."""
    self.calls += 1
    if jax.process_count() > 1:
      return self.ckpt.reached_preemption(self.calls)
    return self.requested

  def close(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


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


def host_sum(par: Parallelism, metrics_list, sums=None) -> dict[str, Any]:
  """Sums per-call metrics on the host (in float64), onto `sums` if given: one fetch for the
  whole list."""
  sums = dict(sums or {})
  for metrics in par.to_host(list(metrics_list)):
    for key, value in metrics.items():
      sums[key] = sums.get(key, 0) + np.asarray(value, np.float64)
  return sums


def dispatch_eval(eval_fn, params, eval_sets: dict) -> dict[str, list]:
  """Every batch of every split dispatched, nothing fetched: {split: [metrics on device]}."""
  return {name: [eval_fn(params, batch) for batch in batches]
          for name, batches in eval_sets.items()}


def summarize_eval(par: Parallelism, fetched: dict[str, list]) -> dict[str, dict]:
  """{split: {'loss', 'accuracy', 'count'}} from dispatch_eval's metrics, fetched."""
  results = {}
  for name, metrics in fetched.items():
    sums = host_sum(par, metrics)
    loss, accuracy = steps.summarize(sums)
    results[name] = {"loss": loss, "accuracy": accuracy, "count": int(sums["count"])}
  return results


def eval_metrics(eval_fn, params, eval_sets: dict, par: Parallelism) -> dict[str, dict]:
  """{split: {'loss', 'accuracy', 'count'}}: all batches dispatched, then one fetch."""
  return summarize_eval(par, par.to_host(dispatch_eval(eval_fn, params, eval_sets)))


def _crossed(step: int, num_steps: int, every: int) -> bool:
  """Whether the last call (num_steps steps, ending at `step`) passed a multiple of `every`."""
  return step // every != (step - num_steps) // every


def _start_line(step: int, run) -> str:
  """Where a run starts, in epochs and examples as well as steps."""
  if not step:
    return "starting at step 0"
  return (f"resuming at step {step}: epoch {step / run.steps_per_epoch:.2f}, "
          f"{step * run.config.batch_size:,} examples seen")


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


# --- the run: what is fixed, and what moves ---------------------------------------------------

@dataclasses.dataclass
class Run:
  """Everything fixed for one run, built by `setup` before anything is compiled."""
  config: ml_collections.ConfigDict
  par: Parallelism
  workdir: pathlib.Path
  splits: dict
  train_data: Any
  eval_sets: dict
  steps_per_epoch: int
  total_steps: int
  options: steps.StepOptions
  peak_flops: float | None  # all devices together, where known
  lock: Any = None          # workdir.Lock, held by process 0 while the run trains

  @property
  def is_chief(self) -> bool:
    return jax.process_index() == 0


@dataclasses.dataclass
class Progress:
  """What moves as the run goes. `sums` are this epoch's metrics, on the device."""
  step: int
  start_step: int
  sums: Any = None
  resumed_sums: Any = None     # the running sums saved mid-epoch with the restored checkpoint
  nonfinite_checked: int = 0   # non-finite steps of this epoch already checked
  checked_step: int = 0        # the last step known to be finite (or skipped)
  skipped: int = 0             # non-finite updates dropped (skip_nonfinite_updates), earlier epochs
  pending_logs: list = dataclasses.field(default_factory=list)  # [(step, epoch, sums)]
  last_log: tuple = (0, 0.0, 0.0)  # (step, time, not_training_seconds) at the last line
  host_syncs: int = 0
  host_seconds: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
  last_eval: dict = dataclasses.field(default_factory=dict)
  stop_reason: str = "completed"
  run_start: float = dataclasses.field(default_factory=time.perf_counter)

  @contextlib.contextmanager
  def timed(self, phase: str):
    """Host seconds per phase of the loop (result.json's host_seconds: where the time goes)."""
    start = time.perf_counter()
    try:
      with jax.profiler.TraceAnnotation(phase):  # (named in a profile_steps trace)
        yield
    finally:
      self.host_seconds[phase] += time.perf_counter() - start


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks everything that can fail on bad input, reads the data, prepares the workdir.
  Raises ConfigError/DataError/OSError before anything is compiled."""
  validate_config(config)
  input_pipeline.check_input_mode(config)
  par = Parallelism(config.parallelism)
  par.check_batch_size(config.batch_size, "batch_size")
  par.check_batch_size(config.eval_batch_size, "eval_batch_size")
  platform = par.devices[0].platform
  options = steps.StepOptions.from_config(config, par.num_devices, platform)
  if config.batch_size % (options.microbatches * par.num_devices):
    raise ConfigError(
        f"batch_size {config.batch_size} does not split into microbatches={config.microbatches}"
        f" chunks on each of {par.num_devices} devices: make batch_size a multiple of "
        f"{config.microbatches * par.num_devices}, lower microbatches, or use 0 (auto).")
  workdir_lib.check(workdir)
  splits = input_pipeline.load_splits(config)  # (a data error leaves no workdir behind)
  path = workdir_lib.prepare(workdir)
  lock = workdir_lib.Lock(path) if jax.process_index() == 0 else None
  try:
    return _setup_data(config, par, options, path, lock, splits)
  except BaseException:
    if lock:
      lock.release()
    raise


# Fields that change what a saved step count means: a resume with another value would take the
# step count of one run for a position in another.
STEP_FIELDS = ("batch_size", "validation_size")


def check_resume(config, path) -> None:
  """Says what changed since the workdir's last start; refuses a change of STEP_FIELDS when
  there are checkpoints to resume from, unless config.resume_with_changed_steps."""
  changes = workdir_lib.config_changes(path, config)
  if not changes:
    return
  logging.warning("the config differs from the one this workdir recorded last: %s", "; ".join(
      f"{field} {old!r} -> {new!r}" for field, (old, new) in changes.items()))
  changed = [field for field in STEP_FIELDS if field in changes]
  resumable = bool(checkpointing.complete_steps(path / workdir_lib.CHECKPOINTS))
  if changed and resumable and not config.get("resume_with_changed_steps", False):
    raise ConfigError(
        f"resuming {path} with a changed {', '.join(changed)} ("
        + ", ".join(f"{f} {changes[f][0]} -> {changes[f][1]}" for f in changed)
        + ") would reinterpret its saved step count: use a new --workdir, or "
        "--config.resume_with_changed_steps=True to continue from the saved step anyway.")


def _setup_data(config, par: Parallelism, options, path, lock, splits) -> Run:
  check_resume(config, path)
  train_data = input_pipeline.create_train_data(config, par, splits)
  steps_per_epoch = train_data.steps_per_epoch
  if steps_per_epoch == 0:
    raise ConfigError(f"batch_size {config.batch_size} is larger than the training split "
                      f"({len(splits['train'][0])} examples).")
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  eval_sets = {name: input_pipeline.eval_batches(*splits[name], par, config.eval_batch_size)
               for name in ("val", "test") if name in splits}
  if config.stop_at_accuracy and config.stop_metric.removesuffix("_accuracy") not in eval_sets:
    raise ConfigError(f"stop_metric={config.stop_metric!r} needs the "
                      f"{config.stop_metric.removesuffix('_accuracy')} split: set "
                      "validation_size > 0 or stop on test_accuracy.")
  peak = hardware.peak_flops(par.devices[0].device_kind, config.dtype)
  return Run(config, par, path, splits, train_data, eval_sets, steps_per_epoch, total_steps,
             options, peak and peak * par.num_devices, lock)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains, evaluates after every epoch and at the end, checkpoints; returns the last eval.

  Raises ConfigError/ValueError/DataError on bad input before compiling anything,
  NonFiniteError on a NaN/inf step, and Preempted after saving when SIGTERM arrives.
  """
  run = setup(config, workdir)
  try:
    return _restore_and_train(run)
  except Exception as e:
    if is_disk_full(e) and not isinstance(e, DiskFullError):
      raise _disk_full(run.workdir, e) from None
    raise
  finally:
    if run.lock:
      run.lock.release()


def _disk_full(workdir: pathlib.Path, error: Exception) -> DiskFullError:
  """One line for a full disk: where, what is saved, how to go on."""
  saved = checkpointing.complete_steps(workdir / workdir_lib.CHECKPOINTS)
  what = (f"the last complete checkpoint is step {saved[-1]} (a save cut short is never taken "
          "for one)" if saved else "no checkpoint was complete yet")
  return DiskFullError(
      f"no space left on the device holding {workdir} ({type(error).__name__} while writing; "
      f"{what}). Free space there, or move the workdir to a larger disk, then run the same "
      "command again to resume.")


def _restore_and_train(run: Run) -> dict[str, float]:
  config = run.config
  state = run.par.replicate(state_lib.initial_state(config, run.steps_per_epoch,
                                                    run.total_steps))
  ckpt = checkpointing.Checkpointer(run.workdir / workdir_lib.CHECKPOINTS, config)
  try:
    state = ckpt.restore_latest(state)
  except BaseException:
    ckpt.close()  # no async machinery left behind by a refused restore
    raise
  progress = Progress(step=int(run.par.to_host(state.step)), start_step=0)
  progress.start_step = progress.step
  if progress.step % run.steps_per_epoch:
    progress.resumed_sums = ckpt.restored_epoch_sums
  if run.is_chief:
    workdir_lib.record_start(run.workdir, config, run.par.mode,
                             steps_per_epoch=run.steps_per_epoch, total_steps=run.total_steps,
                             start_step=progress.step,
                             start_epoch=progress.step / run.steps_per_epoch)
  logging.info("%s; %d steps/epoch, %d steps in all; %s", run.par, run.steps_per_epoch,
               run.total_steps, _start_line(progress.step, run))
  if progress.step >= run.total_steps:
    logging.warning("already finished at step %d of %d: nothing to train (raise num_epochs or "
                    "num_train_steps to train on, or use a new --workdir)", progress.step,
                    run.total_steps)
  writer = workdir_lib.MetricsWriter(run.workdir) if run.is_chief else None
  if writer:
    writer.write_hparams(config)
  compile_timer, preemption = CompileTimer(), PreemptionWatch(ckpt)
  loop = Loop(run, ckpt, writer, compile_timer, preemption)
  # What exists now (the libraries, the data, the state) lives for the whole run: moved out of
  # the garbage collector's reach, a full collection no longer walks ~0.5 M objects, which
  # stalled the dispatch of train calls for 0.1-0.3 s a few times per run.
  gc.collect()
  gc.freeze()
  try:
    state = loop.epochs(state, progress)
  finally:
    gc.unfreeze()
    compile_timer.close()
    preemption.close()
    ckpt.close()  # waits for async saves: what was saved is complete on disk
    if writer:
      writer.close()
  loop.finish(state, progress)
  return progress.last_eval


@dataclasses.dataclass
class PendingEpoch:
  """An epoch's end, dispatched and not yet fetched."""
  step: int
  state: Any              # a copy of its final state (the next train call donates the state)
  sums: Any               # its train metrics, on the device
  evaluation: dict        # dispatch_eval's metrics, on the device
  skipped: int            # skipped updates before this epoch
  nonfinite_checked: int  # its non-finite steps already checked (by a mid-epoch save)
  checked_step: int       # its last step known to be finite


class Loop:
  """The loop over epochs, each phase a short method. Holds the compiled functions.

  The host dispatches a whole epoch ahead of the device and never waits for it between
  epochs: an epoch's evaluation is dispatched behind its last call and fetched only once the
  next epoch's first LEAD_CALLS calls are queued (if it reached stop_at_accuracy, those calls
  are dropped and the epoch's saved copy of the state is final). The host work that can wait
  (metrics files, the checkpoint save, whose Python work would slow the dispatch of the next
  calls) is deferred until the next epoch's calls are all queued. A checkpoint_every_steps save
  is a copy of the state, dispatched at its step and written at the next save point or the
  epoch's end: the device works through the calls queued since while the host saves (waiting
  for the device there instead cost an H200 ~70 ms per save). Progress lines are printed
  once the device has reached them: on CPU, whose computation shares the host's cores, at the
  next log point; on accelerators whenever ready, the newest of those ready."""
  LEAD_CALLS = 2

  def __init__(self, spec: Run, ckpt, writer, compile_timer: CompileTimer,
               preemption: PreemptionWatch):
    self.spec, self.ckpt, self.writer = spec, ckpt, writer
    self.compile_timer, self.preemption = compile_timer, preemption
    config, par = spec.config, spec.par
    self.train_fn = par.compile_train(
        functools.partial(steps.train_call, options=spec.options), num_extra=2)
    eval_model = models.create_model(config, conv_impl="xla")  # same parameters, faster
    self.eval_fn = par.compile_eval(functools.partial(
        steps.eval_step, apply_fn=eval_model.apply, flip_average=config.eval_flip_average))
    self.flops_per_image = models.flops_per_image(config)
    self.learning_rate = state_lib.create_learning_rate_fn(config, spec.steps_per_epoch,
                                                           spec.total_steps)
    # One program copies the whole state (x.copy() per leaf compiles one program per shape:
    # seconds at the first epoch's end; copy_p keeps jit from handing back the inputs).
    self.copy_state = jax.jit(lambda state: jax.tree.map(jax.numpy.copy, state))
    self.deferred = None  # the last epoch's host work that can wait (see above)
    self.pending_save = None  # a periodic save's (step, state copy, sums), not yet written
    self.pending = None   # the last epoch's end, dispatched, not yet fetched (PendingEpoch)
    self.compile_said = False
    self.last_save = time.perf_counter()  # (a restored checkpoint was just read)
    self.max_pending_logs = 1 if spec.par.devices[0].platform == "cpu" else 1_000
    self.profiler = profiling.StepProfiler(
        spec.workdir, config.profile_steps if spec.is_chief else (0, 0))

  def epochs(self, state, progress: Progress):
    try:
      while progress.step < self.spec.total_steps:
        state, outcome = self.train_epoch(state, progress)
        if outcome == "target":  # the last epoch's evaluation reached stop_at_accuracy
          break
        if outcome == "preempt now":
          raise Preempted(progress.step, self.preemption.reason)
        self.end_of_epoch(state, progress)
        if (outcome == "preempt" or progress.step >= self.spec.total_steps
            or jax.process_count() > 1):  # no next epoch to overlap with
          stopped = self.complete_epoch(progress)
          if outcome == "preempt":
            raise Preempted(progress.step, self.preemption.reason)
          if stopped is not None:
            state = stopped
            break
    finally:
      self.profiler.stop()
      if self.profiler.seconds:
        progress.host_seconds["profiler"] += self.profiler.seconds
      self.run_deferred(final=True)  # the last epoch's metrics and checkpoint, always saved
      self.pending_save = None  # (only an error leaves one: its epoch did not end)
    return state

  # --- phase 1: the train calls of one epoch ------------------------------------------------

  def train_epoch(self, state, progress: Progress):
    """Runs the rest of the current epoch (or up to total_steps); the last epoch's end is
    completed once this one's first LEAD_CALLS calls are queued. Returns the state and None,
    "preempt" (stop after this epoch's evaluation), "preempt now" (saved mid-epoch), or
    "target" (the last epoch reached stop_at_accuracy: its state, and its step, are final)."""
    spec, config = self.spec, self.spec.config
    epoch, first = divmod(progress.step, spec.steps_per_epoch)
    resumed, progress.resumed_sums = progress.resumed_sums, None
    progress.sums = spec.par.replicate(resumed if resumed is not None else steps.zero_metrics())
    progress.nonfinite_checked = 0 if resumed is None else int(resumed["nonfinite"])
    progress.checked_step = progress.step  # (earlier steps: checked with their epoch's end)
    last_step = min((epoch + 1) * spec.steps_per_epoch, spec.total_steps)
    batches = spec.train_data.batches(epoch, first, config.steps_per_call)
    for calls in itertools.count(1):
      with progress.timed("train calls"):  # input batches, dispatch (and compilation)
        batches_and_num = next(batches, None)
        if batches_and_num is None:
          break
        num = min(batches_and_num[1], last_step - progress.step)
        state, progress.sums = self.train_fn(state, batches_and_num[0], progress.sums,
                                             np.int32(num))
      progress.step += num
      self.profiler.after_call(progress.step, progress.sums)
      if not self.compile_said:  # the first call compiled (or loaded) the train program
        self.say_compiled()
      if calls == self.LEAD_CALLS and (stopped := self.complete_epoch(progress)) is not None:
        return stopped, "target"
      if _crossed(progress.step, num, config.log_every_steps):
        self.start_log(progress, epoch)
        self.flush_log(progress)
      preempt = self.preemption.reached()
      if progress.step >= last_step:
        break
      periodic = (config.checkpoint_every_steps
                  and _crossed(progress.step, num, config.checkpoint_every_steps))
      if preempt or periodic:
        if (stopped := self.complete_epoch(progress)) is not None:
          return stopped, "target"
        self.mid_epoch_save(state, progress, now=preempt)
      if preempt:
        return state, "preempt now"
    stopped = self.complete_epoch(progress)  # (an epoch shorter than LEAD_CALLS calls)
    if stopped is not None:
      return stopped, "target"
    return state, "preempt" if preempt else None

  def say_compiled(self) -> None:
    self.compile_said = True
    logging.info("train program ready: %.1f s compiling so far (%d XLA compilations; none "
                 "when the compilation cache had it); left out of img/s and ETA",
                 self.compile_timer.seconds, self.compile_timer.compilations)

  def mid_epoch_save(self, state, progress: Progress, now: bool) -> None:
    """Saves the state at this step: `now` (a preemption; several processes always), else
    its copy once the device has more calls queued (see Loop)."""
    self.write_saves(progress)
    if now or jax.process_count() > 1:
      self.write_mid_epoch(progress, progress.step, state, progress.sums)
      return
    with progress.timed("checkpoints"):
      self.pending_save = (progress.step, self.copy_state(state), progress.sums)

  def write_saves(self, progress: Progress) -> None:
    """Writes the saves waiting, oldest first: the last epoch's, then a periodic one."""
    self.run_deferred()
    pending, self.pending_save = self.pending_save, None
    if pending is not None:
      self.write_mid_epoch(progress, *pending)

  def write_mid_epoch(self, progress: Progress, step: int, state, sums) -> None:
    with progress.timed("checkpoints"):  # one fetch: the NaN check and the saved sums
      sums = self.fetch(progress, sums)
      count = int(sums["nonfinite"])  # never save past a NaN/inf step
      self.raise_if_nonfinite(count, progress.nonfinite_checked, progress.checked_step, step)
      progress.nonfinite_checked, progress.checked_step = count, step
      self.ckpt.save(step, state, epoch_sums=sums)
    self.last_save = time.perf_counter()

  # --- phase 2: progress lines, printed when the device reaches them -----------------------

  def start_log(self, progress: Progress, epoch: int) -> None:
    """Starts copying this log point's sums to the host, to be printed by flush_log."""
    for leaf in jax.tree.leaves(progress.sums):
      leaf.copy_to_host_async()
    progress.pending_logs.append((progress.step, epoch, progress.sums))

  def flush_log(self, progress: Progress, force: bool = False) -> None:
    """Prints the newest pending progress line whose values are ready (waiting for the
    oldest ones only when more than max_pending_logs wait, or when `force`d); older ones are
    dropped: their interval is in the newest one's images/s."""
    pending = progress.pending_logs
    if not pending:
      return
    ready = [i for i, (_, _, sums) in enumerate(pending)
             if all(leaf.is_ready() for leaf in jax.tree.leaves(sums))]
    if force or len(pending) > self.max_pending_logs:
      ready.append(len(pending) - 1 if force else len(pending) - self.max_pending_logs - 1)
    if not ready:
      return
    newest = max(ready)
    step, epoch, sums = pending[newest]
    del pending[:newest + 1]
    with progress.timed("progress lines"):
      loss, accuracy = steps.summarize(self.fetch(progress, sums))
    now, excluded = time.perf_counter(), self.not_training_seconds()
    last_step, last_time, last_excluded = progress.last_log
    seconds = max(now - last_time - (excluded - last_excluded), 1e-9)
    if last_time == 0.0:  # the first line: from the start of the loop
      last_step, seconds = progress.start_step, max(now - progress.run_start - excluded, 1e-9)
    progress.last_log = (step, now, excluded)
    spec = self.spec
    images_per_second = (step - last_step) * spec.config.batch_size / seconds
    # The ETA at the whole run's pace so far, evaluations included, compilation (and a trace's
    # writing) not.
    steps_per_second = (step - progress.start_step) / max(now - progress.run_start - excluded,
                                                          1e-9)
    eta = (spec.total_steps - step) / max(steps_per_second, 1e-9)
    flops = images_per_second * self.flops_per_image
    peak = f" ({100 * flops / spec.peak_flops:.1f}% of peak)" if spec.peak_flops else ""
    if self.writer:
      with jax.default_device(jax.local_devices(backend="cpu")[0]):  # (no device sync)
        learning_rate = float(self.learning_rate(step))
      self.writer.write_progress(step, {
          "train_loss": loss, "train_accuracy": accuracy, "learning_rate": learning_rate,
          "images_per_second": images_per_second})
    if spec.is_chief:  # one progress line per run, not one per process
      logging.info("step %d/%d epoch %d | train loss %.4f acc %.4f | %s img/s | ETA %s | "
                   "%.2f TFLOP/s%s", step, spec.total_steps, epoch + 1, loss, accuracy,
                   f"{images_per_second:,.0f}", _format_seconds(eta), flops / 1e12, peak)

  def not_training_seconds(self) -> float:
    """What images/s and the ETA leave out: compiling, and writing a profile_steps trace."""
    return self.compile_timer.seconds + self.profiler.seconds

  def fetch(self, progress: Progress, tree):
    progress.host_syncs += 1
    return self.spec.par.to_host(tree)

  def raise_if_nonfinite(self, count: int, checked: int, checked_step: int, step: int) -> None:
    """NonFiniteError if more than the `checked` non-finite steps (known up to `checked_step`)
    were counted by `step`, unless skip_nonfinite_updates (which only counts them)."""
    if count > checked and not self.spec.config.skip_nonfinite_updates:
      raise NonFiniteError(
          f"non-finite loss or gradient in steps {checked_step + 1}-{step}: the run stopped "
          "without saving them, and the checkpoints already written are intact. Lower "
          "learning_rate, or set --config.skip_nonfinite_updates=True to drop such updates.")

  # --- phase 3: end of epoch: evaluation, metrics, checkpoint -------------------------------

  def end_of_epoch(self, state, progress: Progress) -> None:
    """Dispatches the evaluation behind the epoch's last call, and (one process) a copy of
    the state, which the next train call would donate. Nothing is fetched: complete_epoch
    does that once the next epoch's first calls are queued, so the device never waits for
    the host between epochs."""
    self.write_saves(progress)  # this epoch's calls are all queued
    with progress.timed("evaluation"):
      evaluation = dispatch_eval(self.eval_fn, state.eval_params, self.spec.eval_sets)
      if jax.process_count() == 1:
        state = self.copy_state(state)
    self.pending = PendingEpoch(progress.step, state, progress.sums, evaluation,
                                progress.skipped, progress.nonfinite_checked,
                                progress.checked_step)

  def complete_epoch(self, progress: Progress):
    """The pending epoch's end, if any: one fetch of its train sums and evaluation, its log
    line, and its metrics row and checkpoint (deferred, on one process, until this epoch's
    calls are queued). Returns its state if it reached stop_at_accuracy, else None."""
    pending, self.pending = self.pending, None
    if pending is None:
      return None
    spec = self.spec
    self.flush_log(progress, force=True)
    with progress.timed("evaluation"):
      train_sums, fetched = self.fetch(progress, (pending.sums, pending.evaluation))
    count = int(train_sums["nonfinite"])
    self.raise_if_nonfinite(count, pending.nonfinite_checked, pending.checked_step,
                            pending.step)
    progress.skipped = pending.skipped + count
    scalars = self.epoch_scalars(progress, pending.step, train_sums, fetched)
    if jax.process_count() == 1:
      self.deferred = functools.partial(self.record_epoch, progress, pending.step,
                                        pending.state, scalars, train_sums)
    else:
      self.record_epoch(progress, pending.step, pending.state, scalars, train_sums,
                        final=pending.step >= spec.total_steps)
    progress.last_eval = scalars
    # The next progress line's interval starts here, at the epoch's end: the calls queued
    # since then run on the device behind the evaluation just fetched.
    progress.last_log = (pending.step, time.perf_counter(), self.not_training_seconds())
    if not self.target_reached(scalars):
      return None
    progress.stop_reason, progress.step = "target_reached", pending.step
    progress.pending_logs.clear()  # (lines of the next epoch's first calls, now dropped)
    return pending.state

  def epoch_scalars(self, progress: Progress, step: int, train_sums, fetched) -> dict:
    """An evaluation's row: train and eval metrics, logged."""
    train_loss, train_accuracy = steps.summarize(train_sums)
    scalars = {"epoch": step / self.spec.steps_per_epoch, "train_loss": train_loss,
               "train_accuracy": train_accuracy}
    for name, result in summarize_eval(self.spec.par, fetched).items():
      scalars[f"{name}_loss"], scalars[f"{name}_accuracy"] = result["loss"], result["accuracy"]
      scalars[f"{name}_count"] = result["count"]
    scalars["elapsed_seconds"] = time.perf_counter() - progress.run_start
    if progress.skipped:
      scalars["skipped_updates"] = progress.skipped
    logging.info("epoch %.2f step %d | %s", scalars["epoch"], step,
                 " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in scalars.items() if k != "epoch"))
    return scalars

  def record_epoch(self, progress: Progress, step: int, state, scalars: dict, train_sums,
                   final: bool = False) -> None:
    """An evaluation's row in metrics.jsonl and TensorBoard, and its checkpoint: at the end
    of the run, else if checkpoint_every_seconds have passed since the last save (a save
    costs the host tens of milliseconds: more than an epoch of steps on a GPU)."""
    with progress.timed("metrics files"):
      if self.writer:
        self.writer.write_scalars(step, scalars)
    now = time.perf_counter()
    if final or now - self.last_save >= self.spec.config.checkpoint_every_seconds:
      with progress.timed("checkpoints"):
        self.ckpt.save(step, state, metrics=scalars, epoch_sums=train_sums)
      self.last_save = now

  def run_deferred(self, final: bool = False) -> None:
    deferred, self.deferred = self.deferred, None
    if deferred is not None:
      deferred(final=final)

  # --- phase 4: stop checks and the end -------------------------------------------------------

  def target_reached(self, scalars: dict) -> bool:
    config = self.spec.config
    if config.stop_at_accuracy and scalars[config.stop_metric] >= config.stop_at_accuracy:
      logging.info("%s %.4f >= stop_at_accuracy %.4f: stopping at step %d", config.stop_metric,
                   scalars[config.stop_metric], config.stop_at_accuracy,
                   int(scalars["epoch"] * self.spec.steps_per_epoch))
      return True
    return False

  def finish(self, state, progress: Progress) -> None:
    """The checksum line (every process logs it: processes that disagree show it here) and
    result.json."""
    spec = self.spec
    params = spec.par.to_host(state.params)
    checksum = sum(float(np.abs(x).sum()) for x in jax.tree.leaves(params))
    logging.info("process %d: finished at step %d, parameter checksum %.10g",
                 jax.process_index(), progress.step, checksum)
    if spec.is_chief and progress.last_eval:
      epochs = max(progress.step - progress.start_step, 1) / spec.steps_per_epoch
      workdir_lib.write_result(
          spec.workdir, stop_reason=progress.stop_reason, step=progress.step,
          final=progress.last_eval, train_seconds=time.perf_counter() - progress.run_start,
          compile_seconds=self.compile_timer.seconds,
          compilations=self.compile_timer.compilations,
          traced=dict(self.compile_timer.traced), resumed_from_step=progress.start_step,
          host_syncs=progress.host_syncs, host_syncs_per_epoch=progress.host_syncs / epochs,
          host_seconds=dict(progress.host_seconds), flops_per_image=self.flops_per_image)
      self.summary(progress)

  def summary(self, progress: Progress) -> None:
    """The last line of a run: where it ended, its metrics, its time, its files."""
    final, seconds = progress.last_eval, time.perf_counter() - progress.run_start
    trained = (progress.step - progress.start_step) * self.spec.config.batch_size
    split = "test" if "test_accuracy" in final else "val"
    logging.info(
        "done (%s) at step %d, epoch %.2f: %s accuracy %.4f, loss %.4f | %.1f s (%.1f s "
        "compiling), %s img/s | %s: metrics.jsonl, result.json, checkpoints/",
        progress.stop_reason, progress.step, final["epoch"], split, final[f"{split}_accuracy"],
        final[f"{split}_loss"], seconds, self.compile_timer.seconds,
        f"{trained / max(seconds - self.compile_timer.seconds, 1e-9):,.0f}", self.spec.workdir)
