"""Stopping for a preemption notice (SIGTERM, a first Ctrl-C, or JAX's preemption sync service
on several processes) at the same step on every process, after saving; and, on several
processes, stopping in one line when a process stops answering (`watch_processes`)."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import jax
from absl import logging


PAUSE_VARIABLE = "FMNIST_JAX_PAUSE_AFTER_SAVE"
# Seconds a SIGTERM waits for the current call and its save before the process exits without
# them (a scheduler's grace period is often 30 s, after which it kills without a word).
GRACE_VARIABLE = "FMNIST_JAX_SIGTERM_GRACE_SECONDS"
GRACE_SECONDS = 25.0


class Preempted(Exception):
  """SIGTERM (or a first Ctrl-C) arrived; the state was checkpointed at `step` and the run
  should exit."""
  exit_code = 75  # EX_TEMPFAIL: "try again", as schedulers that requeue understand it

  def __init__(self, step: int, reason: str = "SIGTERM"):
    what = "interrupted" if reason == "Ctrl-C" else "preempted"
    super().__init__(f"{what} ({reason}): checkpoint saved at step {step}; run the same "
                     "command again to resume")
    self.step = step


ABORTED = (b"aborted (Ctrl-C): the checkpoints already written are intact; run the same "
           b"command again to resume from the latest.\n")


def _out_of_time(seconds: float):
  """The SIGTERM's grace is over and no save came: one line, and out."""
  os.write(2, f"SIGTERM: the current step did not end within {seconds:g} s, so no new "
              "checkpoint was saved; exiting. The checkpoints already written are intact: run "
              "the same command again to resume from the latest.\n".encode())
  os._exit(Preempted.exit_code)


def _abort(signum, frame):
  """A second Ctrl-C: out at once, without unwinding through XLA's compiler or Orbax's
  writers (which crash or print tracebacks when interrupted). A save cut short is never taken
  for a checkpoint, so what was written stays intact."""
  os.write(2, ABORTED)
  os._exit(1)


# The key under which JAX's preemption sync service records a notice (SIGTERM) to any process.
NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


def watch_processes(client, timeout: float, last_checkpoint) -> threading.Thread:
  """Several processes: a thread that says every few seconds that this process is alive (a key
  in jax's coordination service) and reads whether the others do. A process silent for
  `timeout` seconds (killed, its host lost) cannot take part in the collective the others wait
  in: they end in one line (and their workdir lock with them) instead of XLA's abort. A
  preemption notice to any process also bounds this one's wait by the SIGTERM grace, as
  signals are not seen while a collective waits. `last_checkpoint()`: the newest step on
  disk."""
  me, count = jax.process_index(), jax.process_count()
  interval = min(5.0, timeout / 4)

  def silent_for(peer: int, seen: dict, now: float) -> float:
    try:
      value = client.key_value_try_get(f"fmnist_jax/alive/{peer}")
    except Exception:  # pylint: disable=broad-except  (not yet set, or the coordinator gone)
      value = None
    if value is not None and value != seen.get(peer, (None,))[0]:
      seen[peer] = (value, now)
    return now - seen.setdefault(peer, (value, now))[1]

  def watch():
    seen, noticed = {}, False
    for beat in itertools.count():
      now = time.monotonic()
      try:
        client.key_value_set(f"fmnist_jax/alive/{me}", str(beat), allow_overwrite=True)
        if not noticed and client.key_value_try_get(NOTICE_KEY) is not None:
          noticed = True
          _grace_timer()
      except Exception:  # pylint: disable=broad-except  (process 0, the coordinator, is gone)
        pass
      for peer in (p for p in range(count) if p != me):
        if silent_for(peer, seen, now) > timeout:
          step = last_checkpoint()
          os.write(2, f"error: process {peer} of {count} stopped answering for {timeout:g} s "
                      f"(killed, or its host lost); the last checkpoint is "
                      f"{'step ' + str(step) if step is not None else 'none yet'}. Start "
                      "every process again with the same command to resume.\n".encode())
          os._exit(1)
      time.sleep(interval)
  thread = threading.Thread(target=watch, daemon=True, name="watch_processes")
  thread.start()
  return thread


_DEADLINES: list[threading.Timer] = []


def _grace_timer() -> None:
  """Exits in one line if the process is still running after the SIGTERM grace (cancelled
  when the run saved: PreemptionWatch.close)."""
  grace = float(os.environ.get(GRACE_VARIABLE) or GRACE_SECONDS)
  timer = threading.Timer(grace, _out_of_time, (grace,))
  timer.daemon = True
  timer.start()
  _DEADLINES.append(timer)


class PreemptionWatch:
  """Whether to stop for a preemption notice, at the same step on every process.

  One process: SIGTERM, or a first Ctrl-C (SIGINT), sets a flag, read between compiled calls;
  a second Ctrl-C aborts at once. Several processes: JAX's preemption sync service agrees on a
  call number at which all processes save (`reached_preemption`: the checkpoint manager's).
  """

  def __init__(self, reached_preemption):
    self.reached_preemption = reached_preemption
    self.calls, self.requested, self.reason = 0, False, "SIGTERM"
    self.pause_seconds = float(os.environ.get(PAUSE_VARIABLE) or 0.0)
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame):
    if signum == signal.SIGINT:
      self.reason = "Ctrl-C"
      signal.signal(signal.SIGINT, _abort)  # a second one aborts
      logging.warning("Ctrl-C: saving a checkpoint after the current step (Ctrl-C again to "
                      "abort at once; the checkpoints already written stay intact)")
    else:
      logging.warning("SIGTERM received: saving a checkpoint after the current step (or "
                      "exiting without one if that takes over %g s)",
                      float(os.environ.get(GRACE_VARIABLE) or GRACE_SECONDS))
      _grace_timer()
    self.requested = True

  def after_saves(self, written: int) -> None:
    """A hook for tests of kills and signals, called after each flush of the saver with
    `written`, how many checkpoints it wrote: with $FMNIST_JAX_PAUSE_AFTER_SAVE=SECONDS the run
    waits once, after its first checkpoint is on disk, until a signal arrives or the seconds
    pass, so that a signal lands at a known step of a run of a few steps."""
    if not written:
      return
    seconds, self.pause_seconds = self.pause_seconds, 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not self.requested:
      time.sleep(0.01)

  def reached(self) -> bool:
    """Call once after every compiled train call, on every process."""
    self.calls += 1
    if jax.process_count() > 1:
      return self.reached_preemption(self.calls)
    return self.requested

  def close(self):
    while _DEADLINES:  # (the run saved and is exiting by its own path)
      _DEADLINES.pop().cancel()
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
