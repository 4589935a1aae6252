"""Entry point: `python -m fmnist_jax.main --config configs/default.py --workdir DIR`.

Multi-process (several hosts, or several processes on one): pass --coordinator_address,
--num_processes and --process_id, or --distributed to let jax detect them (TPU pods, SLURM,
Open MPI). Override config fields with `--config.run.batch_size=512`.

Trains (fmnist_jax.train), then writes the report (fmnist_jax.report) into WORKDIR/report/.
"""

import os
import pathlib
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from fmnist_jax import console, dataset

dataset.quiet_tensorflow()  # before TensorFlow is imported

FLAGS = flags.FLAGS


def define_flags(values: flags.FlagValues = FLAGS, sys_argv=None) -> None:
  """The command line's flags (on `values`; `sys_argv`: where config_flags looks for the
  --config.FIELD overrides, sys.argv by default)."""
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the report.",
                      flag_values=values)
  config_flags.DEFINE_config_file(
      "config", None, "Training config file: FILE or FILE:VARIANT, e.g. configs/default.py, "
      "configs/best.py, configs/speedrun.py:b1024_e30; override fields by path with "
      "--config.SECTION.FIELD=VALUE (e.g. --config.optimizer.learning_rate=3e-3).",
      flag_values=values, lock_config=True, sys_argv=sys_argv)
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with "
                    "auto-detection (TPU pod, SLURM, ...).", flag_values=values)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).",
                      flag_values=values)
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).",
                       flag_values=values)
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).",
                       flag_values=values)
  flags.DEFINE_integer("distributed_timeout", 300, "Seconds a process waits for the others "
                       "to connect (multi-process) before it gives up in one line.",
                       flag_values=values)
  flags.DEFINE_integer("peer_timeout", 60, "Seconds a process may stop answering (killed, "
                       "its host lost) before the others stop in one line (multi-process).",
                       flag_values=values)
  flags.DEFINE_bool("verbose", False, "Also show the libraries' INFO logs (JAX, TensorFlow, "
                    "tfds, Orbax); by default only their warnings and errors.",
                    flag_values=values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=values)


def _flag_names() -> frozenset:
  values = flags.FlagValues()
  define_flags(values, sys_argv=["fmnist_jax.main"])
  return frozenset(values) | {"help", "helpshort", "helpfull", "helpxml", "flagfile"}


def initialize_distributed():
  """jax.distributed, when asked for: says whom a process waits for, and gives up in one line
  after --distributed_timeout seconds (a process that never came, or came with other flags)."""
  explicit = FLAGS.coordinator_address is not None
  if not (explicit or FLAGS.distributed):
    return
  import threading
  import jax
  timeout = FLAGS.distributed_timeout
  where = (f"process {FLAGS.process_id} of {FLAGS.num_processes}, coordinator "
           f"{FLAGS.coordinator_address}" if explicit else "auto-detected processes")
  advice = ("Start every process with the same --coordinator_address and --num_processes and "
            "its own --process_id.")
  logging.info("%s: waiting up to %d s for every process to connect", where, timeout)
  connected = threading.Event()

  def give_up():  # (before jax's own deadline, which aborts with a C++ stack dump)
    if not connected.wait(timeout):
      sys.stderr.write(f"error: {where}: not every process connected within {timeout} s. "
                       f"{advice}\n")
      sys.stderr.flush()
      os._exit(1)
  threading.Thread(target=give_up, daemon=True).start()
  try:
    # (jax's own deadlines come after this module's, which end in one line, not an abort)
    deadlines = dict(initialization_timeout=timeout + 60,
                     heartbeat_timeout_seconds=max(100, FLAGS.peer_timeout + 60))
    if explicit:
      jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                 num_processes=FLAGS.num_processes,
                                 process_id=FLAGS.process_id, **deadlines)
    else:
      jax.distributed.initialize(**deadlines)
  except Exception as e:  # pylint: disable=broad-except  (jax's own, with a C++ status)
    sys.exit(f"error: {where}: {type(e).__name__}: {str(e).splitlines()[0][:200]}. {advice}")
  connected.set()
  from jax._src import distributed  # (its client: the coordination service's key-values)
  from fmnist_jax import checkpointing, preemption, workdir as workdir_lib
  checkpoints = pathlib.Path(os.path.expanduser(FLAGS.workdir)) / workdir_lib.CHECKPOINTS
  preemption.watch_processes(distributed.global_state.client, FLAGS.peer_timeout,
                             lambda: (checkpointing.complete_steps(checkpoints) or [None])[-1])


def configure_compilation_cache(cache_dir: str) -> str:
  """JAX's persistent compilation cache, so that a repeated or resumed run skips XLA's
  compilation: $JAX_COMPILATION_CACHE_DIR if set, else
  config.parallelism.compilation_cache_dir ("" turns it off). Every program is cached, however
  fast it compiled. Returns what the console says: the folder used, or "off" and why."""
  import jax
  cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser(cache_dir)
  if not cache_dir:
    return "off"
  try:
    os.makedirs(cache_dir, exist_ok=True)
    usable = os.access(cache_dir, os.W_OK | os.X_OK)
  except OSError:
    usable = False
  if not usable:
    return f"off ({cache_dir} is not a writable folder)"
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  # Every program, not only those that took over a second (jax's default): a short run's
  # many small programs add up.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return cache_dir


def train_and_report(config, workdir: str) -> None:
  """Trains, then writes the report (process 0 of a one-process run; several processes: the
  report is one command away)."""
  import jax
  from fmnist_jax import train
  from fmnist_jax.errors import ReportError

  def report() -> None:  # (run while the run still holds the workdir's lock)
    from fmnist_jax import report  # matplotlib and scikit-learn only when needed
    try:
      logging.info("report written to %s", report.write_report(workdir))
    except KeyboardInterrupt:
      raise ReportError(
          "interrupted (Ctrl-C) while writing the report: the training is complete and saved, "
          f"and the previous report (if any) is intact; write it with `python -m "
          f"fmnist_jax.report --workdir {workdir}`.") from None
  chief = jax.process_index() == 0 and config.logging.write_report
  train.train_and_evaluate(config, workdir,
                           then=report if chief and jax.process_count() == 1 else None)
  if chief and jax.process_count() > 1:
    logging.info("multi-process run: write the report with "
                 "`python -m fmnist_jax.report --workdir %s`", workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  console.configure(FLAGS.verbose)
  initialize_distributed()
  import jax
  from fmnist_jax.errors import DiskFullError, FmnistError
  from fmnist_jax.preemption import ABORTED, Preempted
  logging.info("JAX process %d/%d, %d local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.local_devices())
  logging.info("compilation cache: %s",
               configure_compilation_cache(FLAGS.config.parallelism.compilation_cache_dir))
  try:  # (`~` after `=` is not the shell's to expand: the one expansion, here)
    train_and_report(FLAGS.config, os.path.expanduser(FLAGS.workdir))
  except Preempted as e:
    logging.warning("%s", e)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    sys.exit(ABORTED.decode().strip())
  except DiskFullError as e:
    # A save that Orbax was still writing in a thread fails again at interpreter shutdown
    # (its executor gone), with a traceback after this line: leave without the shutdown. The
    # last complete checkpoint is on disk; an interrupted save never counts as complete.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
  except (FmnistError, OSError) as e:
    sys.exit(f"error: {e}")
  except jax.errors.JaxRuntimeError:
    if jax.process_count() > 1:
      # A collective fails at once when a peer dies (Gloo: "connection reset by peer"); the
      # peer watch names the process that stopped answering within --peer_timeout and exits
      # with that one line: give it the time, rather than print the library's traceback.
      time.sleep(FLAGS.peer_timeout + 10)
    raise


def _flag_values(argv, name: str) -> list[str]:
  """The values given to --NAME (as --NAME=V or --NAME V)."""
  values = []
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      values.append(arg.split("=", 1)[1])
    elif arg == f"--{name}" and i + 1 < len(argv):
      values.append(argv[i + 1])
  return values


def _overrides(argv) -> list[str]:
  """The --config.PATH overrides as `--config.PATH=VALUE`, also where given as
  `--config.PATH VALUE` (absl takes both)."""
  found = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config."):
      spaced = "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--")
      found.append(f"{arg}={argv[i + 1]}" if spaced else arg)
  return found


def _check_processes(argv) -> str | None:
  """The multi-process flags, before jax.distributed waits on them: one line, or None."""
  address, count, index = (_flag_values(argv, name) for name in
                           ("coordinator_address", "num_processes", "process_id"))
  for name in ("distributed_timeout", "peer_timeout"):
    if any(not value.isdigit() or int(value) < 1 for value in _flag_values(argv, name)):
      return f"error: --{name} must be a whole number of seconds, at least 1"
  if not address:
    return ("error: --num_processes and --process_id need --coordinator_address=HOST:PORT "
            "(process 0's), or use --distributed" if count or index else None)
  try:
    count, index = int(count[-1]), int(index[-1])
  except (IndexError, ValueError):
    return ("error: --coordinator_address needs --num_processes=N and --process_id=I (0 to "
            "N-1, its own on each process), as integers")
  if count < 1 or not 0 <= index < count:
    return (f"error: --process_id={index} must be in 0..{count - 1} (--num_processes={count}): "
            "give each process its own index, process 0 the coordinator")
  return None


def check_command_line(argv) -> str | None:
  """A one-paragraph error for what absl would answer with a traceback, or None: a --config
  file that is missing, not valid Python or without get_config(), or whose fields are not
  configs/default.py's; a --config.SECTION.FIELD (also in a --flagfile) that the config has
  not (with the closest valid names) or a value of the wrong type; a --workdir that is empty,
  a file, or a folder of something else (workdir.check). Runs before flags are parsed and
  before jax is imported."""
  from fmnist_jax import config_file, workdir as workdir_lib
  from fmnist_jax.errors import ConfigError
  try:  # (the flags a --flagfile holds, in its place)
    argv = flags.FlagValues().read_flags_from_files(list(argv), force_gnu=False)
  except flags.Error as e:
    return f"error: --flagfile: {str(e).removeprefix('ERROR:: ')}"
  if (problem := _check_processes(argv)):
    return problem
  for workdir in _flag_values(argv, "workdir"):
    try:
      workdir_lib.check(workdir)
    except ConfigError as e:
      return f"error: {e}"
  overrides = _overrides(argv)
  for value in _flag_values(argv, "config"):
    path = value.partition(":")[0]  # ml_collections allows "file.py:arg"
    if not os.path.isfile(path):
      return (f"error: config file {path!r} does not exist (relative paths are taken from "
              f"{os.getcwd()}); the shipped ones are configs/default.py, configs/best.py, "
              "configs/speedrun.py, configs/no_dropout.py, configs/wide.py and "
              "configs/tiny.py.")
    try:
      config = config_file.load_with_overrides(value, overrides)
    except ConfigError as e:
      return f"error: {e}"
    for arg in argv:  # a config field given as a flag of its own
      name, _, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
      found = [path for path in config_file.paths(config)
               if name in (path, config_file.field_name(path))]
      if found and name not in _flag_names():
        return (f"error: --{name} is not a flag of fmnist_jax.main but a field of the config: "
                "write "
                + " or ".join(f"--config.{path}" + (f"={value}" if value else "")
                              for path in found))
  return None


if __name__ == "__main__":
  if (problem := check_command_line(sys.argv[1:])):
    sys.exit(problem)
  define_flags()  # (after the check: config_flags reads the command line, flagfiles too, here)
  app.run(main)
