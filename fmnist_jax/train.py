"""The training loop: set up a run, restore it, train it, say how it ended.

The host runs ahead of the device. Host work that needs a device value is a task in
`Deferred`, run once the loop has dispatched the call that reaches the task's step: a progress
line one call after its log point; an epoch's evaluation (dispatched behind its last call)
LEAD_CALLS calls into the next epoch; a save once the next save point's calls are queued.
The compiled code lives in `steps` (what a step computes) and `parallel` (how it is compiled).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from fmnist_jax import checkpointing, evaluate, hardware, initializers, input_pipeline, models
from fmnist_jax import population, profiling, state as state_lib, steps, workdir as workdir_lib
from fmnist_jax import config_file, configuration, distill, pbt
from fmnist_jax.errors import ConfigError, DiskFullError, is_disk_full
from fmnist_jax.parallel import Parallelism
from fmnist_jax.preemption import Preempted, PreemptionWatch
from fmnist_jax.progress import Deferred, Progress, Startup, crossed

LEAD_CALLS = 2  # an epoch's evaluation is fetched once this many calls of the next are queued


@dataclasses.dataclass
class Run:
  """Everything fixed for one run, built by `setup` before anything is compiled."""
  config: ml_collections.ConfigDict
  par: Parallelism
  workdir: pathlib.Path
  train_data: Any
  eval_sets: dict
  steps_per_epoch: int
  total_steps: int
  options: steps.StepOptions
  lock: Any = None  # workdir.Lock, held by process 0 while the run trains
  members: list = dataclasses.field(default_factory=lambda: [{}])  # fmnist_jax.population's
  adjust: Any = None  # the recipe's initialisation (fmnist_jax.initializers.recipe)
  teacher: Any = None  # fmnist_jax.distill's

  @property
  def is_chief(self) -> bool:
    return jax.process_index() == 0


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks everything that can fail on bad input, reads the data, prepares the workdir.
  Raises ConfigError/DataError/OSError before anything is compiled."""
  configuration.validate_config(config)
  shared = {path: value for path, value in workdir_lib.by_path(config).items()
            if path not in config_file.HOST_PATHS}
  hardware.check_processes_agree({**shared, "--workdir": os.path.abspath(workdir)})
  for line in configuration.warnings(config):
    logging.warning("%s", line)
  config = pbt.replayed(config)  # (a replay: one member whose values its schedule sets)
  members = population.check(config)
  for line in pbt.check(config, members):
    logging.warning("%s", line)
  input_pipeline.check_input_mode(config)
  par = population.parallelism(config, members)
  par.check_batch_size(config.run.batch_size, "run.batch_size")
  par.check_batch_size(config.eval.batch_size, "eval.batch_size")
  options = steps.StepOptions.from_config(config, par.num_devices, par.devices[0].platform)
  steps.check_microbatches(config, options.microbatches, par.num_devices)
  options = population.step_options(config, members, options)
  teacher = distill.check(config)  # (restored before the data is read)
  options = distill.step_options(config, teacher, options)
  workdir_lib.check(workdir)
  splits = input_pipeline.load_splits(config)  # (a data error leaves no workdir behind)
  path = workdir_lib.prepare(workdir)
  lock = workdir_lib.Lock(path) if jax.process_index() == 0 else None
  try:
    workdir_lib.check_resume(path, config)
    train_data = input_pipeline.create_train_data(
        config, par, splits, tuple(population.values(config, members, "run.seed")),
        alternate="alternate" in population.values(config, members, "augment.flip"),
        extra=distill.train_targets(config, teacher, splits["train"][0]))
    if train_data.steps_per_epoch == 0:
      raise ConfigError(f"run.batch_size {config.run.batch_size} is larger than the training "
                        f"split ({len(splits['train'][0])} examples).")
    eval_sets = {name: input_pipeline.eval_batches(*splits[name], par, config.eval.batch_size)
                 for name in ("val", "test") if name in splits}
    total_steps = (config.run.num_train_steps if config.run.num_train_steps > 0
                   else config.run.num_epochs * train_data.steps_per_epoch)
    profiling.check_window(config.logging.profile_steps, total_steps)
    if teacher:
      distill.describe(config, teacher, splits["test"])
  except BaseException:
    if lock:
      lock.release()
    raise
  return Run(config, par, path, train_data, eval_sets, train_data.steps_per_epoch, total_steps,
             options, lock, members, initializers.recipe(config, splits["train"][0]), teacher)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       then=None) -> dict[str, float]:
  """Trains, evaluates after every epoch and at the end, checkpoints; returns the last eval.
  `then()` runs once the run has finished, with the workdir still locked (the report).
  Raises ConfigError/ValueError/DataError on bad input before compiling anything,
  NonFiniteError on a NaN/inf step, and Preempted after saving when SIGTERM arrives."""
  startup = Startup()
  run = setup(config, workdir)
  startup.mark("data")
  try:
    state, step, extras, ckpt, (codes, _) = _restore(run)
    stopped, last_eval = population.none_training(codes), {}
    if workdir_lib.finished(step, run.total_steps, stopped):
      ckpt.close()
      if run.is_chief and not workdir_lib.result_is_current(run.workdir, step):
        write_result(run, step, "target_reached" if stopped else "completed", rebuilt=True)
        logging.warning("result.json was missing or stale: rebuilt from metrics.jsonl")
    else:
      loop = Loop(run, ckpt, step, extras.get("epoch_sums"), startup, codes)
      gc.collect()
      gc.freeze()  # what lives for the whole run stays out of the collector's walks
      try:
        state, step = loop.train(state, step)
      finally:
        gc.unfreeze()
        loop.close()
      loop.finish(state, step)
      last_eval = loop.last_eval
    if then:
      then()
    return last_eval
  except Exception as e:
    if is_disk_full(e) and not isinstance(e, DiskFullError):
      raise checkpointing.disk_full(run.workdir / workdir_lib.CHECKPOINTS, e) from None
    raise
  finally:
    if run.lock:
      run.lock.release()


def write_result(run: Run, step: int, stop_reason: str, **extra) -> dict:
  """result.json from the run's rows (population.result): the same at the end of the run and
  when rebuilt after a kill. Returns it."""
  summary = population.result(run.members, workdir_lib.read_metrics(run.workdir), step)
  workdir_lib.write_result(run.workdir, stop_reason=stop_reason, step=step, **summary, **extra)
  return summary


def _restore(run: Run):
  """The initial state, or the latest checkpoint's: (state, step, extras, checkpointer, the
  members' statuses as host values)."""
  state = run.par.place_state(population.initial_state(
      run.config, run.members, run.steps_per_epoch, run.total_steps, adjust=run.adjust))
  ckpt = checkpointing.Checkpointer(run.workdir / workdir_lib.CHECKPOINTS, run.config)
  try:
    state, extras = ckpt.restore_latest(state)
    ckpt.prepare(state)
  except BaseException:
    ckpt.close()  # no async machinery left behind by a refused restore
    raise
  step = int(run.par.to_host(state.step)[0])  # (the members share it)
  status = run.par.to_host(checkpointing.status_of(state))
  if (status[0] == steps.REACHED).any():  # (at a target this config may no longer ask for)
    status = population.reopen(run.config, status, workdir_lib.read_metrics(run.workdir))
    state = state.replace(hparams={**state.hparams, **run.par.place_state(
        dict(zip(checkpointing.STATUS_KEYS, status)))})
  if run.is_chief:
    workdir_lib.record_start(run.workdir, run.config, run.par.mode,
                             steps_per_epoch=run.steps_per_epoch, total_steps=run.total_steps,
                             start_step=step, start_epoch=step / run.steps_per_epoch)
  where = (f"resuming at step {step}: epoch {step / run.steps_per_epoch:.2f}, "
           f"{step * run.config.run.batch_size:,} examples seen" if step else "starting at step 0")
  logging.info("%s; %d steps/epoch, %d steps in all; %s", run.par, run.steps_per_epoch,
               run.total_steps, where)
  for line in population.console_lines(run.members, status):
    logging.info("%s", line)
  return state, step, extras, ckpt, status


class TargetReached(Exception):
  """An epoch's evaluation reached stop_at_accuracy: the run ends with that epoch's state."""
  def __init__(self, step: int, state):
    super().__init__(f"stop_at_accuracy reached at step {step}")
    self.step, self.state = step, state


def epoch_row(run: Run, step: int, train_sums, results: dict, elapsed: float) -> dict:
  """An evaluation's row (the members' means): train and eval metrics."""
  train_loss, train_accuracy = steps.summarize(train_sums)
  scalars = {"epoch": step / run.steps_per_epoch, "train_loss": train_loss,
             "train_accuracy": train_accuracy}
  for name, result in results.items():
    scalars[f"{name}_loss"], scalars[f"{name}_accuracy"] = result["loss"], result["accuracy"]
    scalars[f"{name}_count"] = result["count"]
  scalars["elapsed_seconds"] = elapsed
  if run.config.optimizer.skip_nonfinite_updates and np.sum(train_sums["nonfinite"]):
    scalars["skipped_updates"] = int(np.sum(train_sums["nonfinite"]))
  return scalars


class Loop:
  """One run's compiled functions, its clock, its saver and the loop over its train calls."""

  def __init__(self, run: Run, ckpt: checkpointing.Checkpointer, start_step: int,
               resumed_sums, startup: Startup, status):
    config, par = run.config, run.par
    self.run, self.ckpt, self.stopping, self.last_eval = run, ckpt, False, {}
    self.stop_reason = "completed"
    members = len(run.members)
    per_pass = population.resolve_per_pass(config, par.devices[0].platform)
    self.train_fn = par.compile_train(functools.partial(
        population.train_call, options=run.options, per_pass=per_pass), batch_axis=2,
        num_extra=3)
    self.teacher = par.replicate(run.teacher.params) if run.options.teacher else None
    self.eval_model = models.create_model(config, conv_impl="xla")  # same parameters, faster
    self.eval_fn = par.compile_eval(functools.partial(
        population.eval_step, apply_fn=self.eval_model.apply, **models.tta_options(config),
        per_pass=per_pass))
    # What each evaluation changes in the state, on the device: members that reached
    # stop_at_accuracy (they keep their state from then on), and PBT's scores.
    self.after_evaluation = [program for program in (
        population.stop_reached(config, run.eval_sets), pbt.scorer(config, run.eval_sets))
        if program]
    self.exploit = pbt.exploiter(config, run.members, run.steps_per_epoch)
    # One program copies the whole state (a copy per leaf would compile one per shape).
    self.copy_state = jax.jit(lambda state: jax.tree.map(jax.numpy.copy, state))
    self.learning_rate = state_lib.create_learning_rate_fn(config, run.steps_per_epoch,
                                                           run.total_steps)
    peak = hardware.peak_flops(par.devices[0].device_kind, config.model.dtype)
    self.progress = Progress(start_step, run.total_steps, config.run.batch_size * members,
                             par.to_host,
                             flops_per_image=models.flops_per_image(config),
                             peak_flops=peak and peak * par.num_devices, show=run.is_chief)
    self.progress.startup = startup
    self.writer = workdir_lib.MetricsWriter(run.workdir) if run.is_chief else None
    if self.writer:
      self.writer.write_hparams(config)
    self.saver = checkpointing.Saver(ckpt, config, self.progress.fetch, self.write_row,
                                     population.names(run.members),
                                     np.flatnonzero(status == steps.DIVERGED))
    # Each member's latest row: a member that no longer trains carries its train values.
    self.last_rows = population.last_rows(workdir_lib.read_metrics(run.workdir)) \
        if start_step else {}
    self.preemption = PreemptionWatch(ckpt.reached_preemption)
    self.profiler = profiling.StepProfiler(
        run.workdir, config.logging.profile_steps if run.is_chief else (0, 0), self.progress.paused)
    self.deferred = Deferred()
    self.zeros = par.place_state(steps.zero_metrics(members))
    resumed_sums = {**steps.zero_metrics(members), **(resumed_sums or {})}
    if start_step % run.steps_per_epoch == 0:  # (the run-wide counters only)
      resumed_sums = dict(steps.zero_metrics(members), nonfinite=resumed_sums["nonfinite"],
                          diverged=resumed_sums["diverged"])
    self.start_sums = par.place_state(resumed_sums)
    startup.mark("state")

  def train(self, state, step: int):
    """Trains from `step` to the end of the run, or to stop_at_accuracy; returns the final
    state and its step. Raises Preempted once the state at a preemption is saved."""
    run, config, progress = self.run, self.run.config, self.progress
    every, sums = config.checkpoints.every_steps, self.start_sums
    overlap = jax.process_count() == 1  # several processes complete each epoch at its end
    try:
      while step < run.total_steps:
        epoch, first = divmod(step, run.steps_per_epoch)
        epoch_end = min((epoch + 1) * run.steps_per_epoch, run.total_steps)
        next_end = min(epoch_end + run.steps_per_epoch, run.total_steps)
        preempt = False
        if self.exploit and pbt.due(config, step, run.steps_per_epoch):
          state = self.exploit(state)  # (from the scores of the evaluation before)
        for batches, num in run.train_data.batches(epoch, first, config.parallelism.steps_per_call):
          num = min(num, epoch_end - step)
          with progress.timed("train calls"):  # input batches, dispatch (and compilation)
            state, sums = self.train_fn(state, batches, sums, np.int32(num), self.teacher)
          step += num
          self.profiler.after_call(step, sums)
          progress.program_ready()  # (said once: the first call compiled or loaded it)
          self.deferred.run(step)  # what the device has now passed: lines, evaluations, saves
          if crossed(step, num, config.logging.every_steps):
            self.deferred.add(step + 1, self.log_task(step, sums))
          preempt = self.preemption.reached()
          if step >= epoch_end:
            break
          if preempt:  # mid-epoch: this state, saved now
            self.saver.request(step, state, sums)
            self.save()
            raise Preempted(step, self.preemption.reason)
          if crossed(step, num, every):  # a copy, written at the next save point
            with progress.timed("checkpoints"):
              self.saver.request(step, self.copy_state(state), sums)
            self.deferred.add(min(step + every, epoch_end) if overlap else step, self.save)
        # The epoch's end: its evaluation and its state are fetched once later calls queue.
        with progress.timed("evaluation"):
          evaluation = evaluate.dispatch(self.eval_fn, state.eval_params, run.eval_sets)
          for program in self.after_evaluation:
            state = program(state, evaluation)
          end = functools.partial(self.end_epoch, step, self.copy_state(state), sums,
                                  evaluation, next_end)
        self.deferred.add(min(step + LEAD_CALLS * config.parallelism.steps_per_call, next_end), end)
        self.stopping = preempt or step >= run.total_steps
        if self.stopping or not overlap:  # no next epoch to overlap with
          self.deferred.run()
        if preempt:
          raise Preempted(step, self.preemption.reason)
        sums = dict(self.zeros, nonfinite=sums["nonfinite"], diverged=sums["diverged"])
    except TargetReached as reached:
      self.deferred.tasks.clear()  # (the next epoch's first calls: dropped)
      self.saver.drop_after(reached.step)
      state, step, self.stop_reason = reached.state, reached.step, "target_reached"
    except BaseException:
      self.deferred.tasks.clear()
      self.save(checked_only=True)  # the last evaluated epoch's row and checkpoint
      raise
    self.deferred.run()
    self.save()
    return state, step

  def log_task(self, step: int, sums):
    """A progress line's task; its values start their way to the host now."""
    for leaf in jax.tree.leaves(sums):
      leaf.copy_to_host_async()

    def line():
      with self.progress.timed("progress lines"):
        scalars = self.progress.line(step, step / self.run.steps_per_epoch,
                                     self.progress.fetch(sums))
        if self.writer:
          with jax.default_device(jax.local_devices(backend="cpu")[0]):  # (no device sync)
            scalars["learning_rate"] = float(self.learning_rate(step))
          self.writer.write_progress(step, scalars)
    return line

  def end_epoch(self, step: int, state, sums, evaluation, save_due: int) -> None:
    """An epoch's end, once later calls are queued: one fetch of its train sums and
    evaluation, its line, its row and checkpoint requested; TargetReached if it reached
    stop_at_accuracy."""
    config = self.run.config
    with self.progress.timed("evaluation"):
      train_sums, fetched, status, lineage = self.progress.fetch(
          (sums, evaluation, checkpointing.status_of(state),
           pbt.current(state, self.run.members) if self.exploit else {}))
    counted = steps.healthy(status[0])  # (the means are those of the members that did not diverge)
    scalars = epoch_row(self.run, step, {k: v[counted] for k, v in train_sums.items()},
                        evaluate.summarize(fetched, counted), self.progress.elapsed())
    self.progress.evaluation_line(step, scalars)
    lineage = lineage and {**lineage, "since": step - self.run.steps_per_epoch}
    scalars["members"] = population.member_rows(self.run.members, scalars, train_sums, fetched,
                                                status, self.last_rows, lineage)
    self.last_rows = population.last_rows(scalars["members"])
    self.saver.check_finite(train_sums, status, scalars)
    self.last_eval = scalars
    self.progress.restart_interval(step)  # (the calls queued since run behind its evaluation)
    reached = population.none_training(status[0])
    self.saver.request(step, state, train_sums, row=scalars, always=reached or self.stopping)
    self.deferred.add(save_due, self.save)
    if reached:
      logging.info("%s: stopping at step %d", population.stop_line(config, status[0]), step)
      raise TargetReached(step, state)

  def write_row(self, step: int, scalars: dict) -> None:
    with self.progress.timed("metrics files"):
      for row in (scalars["members"] if self.writer else []):
        self.writer.write_scalars(step, row, population.tensorboard_tag(row))

  def save(self, checked_only: bool = False) -> None:
    with self.progress.timed("checkpoints"):
      self.preemption.after_saves(self.saver.flush(checked_only))

  def close(self) -> None:
    """Stops what runs beside the loop; waits until every save is complete on disk."""
    self.profiler.stop()
    if self.profiler.seconds:
      self.progress.host_seconds["profiler"] += self.profiler.seconds
    self.progress.close()
    self.ckpt.close()
    self.preemption.close()  # (after the saves: a SIGTERM's grace covers them too)
    if self.writer:
      self.writer.close()

  def finish(self, state, step: int) -> None:
    """The checksum line (every process logs it: processes that disagree show it here),
    result.json and the last line."""
    run = self.run
    checksum = sum(float(np.abs(x).sum()) for x in jax.tree.leaves(run.par.to_host(state.params)))
    logging.info("process %d: finished at step %d, parameter checksum %.10g",
                 jax.process_index(), step, checksum)
    if run.is_chief and self.last_eval:
      summary = write_result(run, step, self.stop_reason,
                             resumed_from_step=self.progress.start_step,
                             flops_per_image=self.progress.flops_per_image,
                             **distill.result(run.config, run.teacher, self.eval_model,
                                              run.par.to_host(state.eval_params)),
                             **self.progress.record(step, run.steps_per_epoch))
      self.progress.summary(self.stop_reason, step, summary["final"], run.workdir)
