"""What every benchmark shares: its front end (the flags they all take, checked before anything
runs), the machine and commit header, the JSON writer, mean ± std and its format, and starting
`python -m fmnist_jax.main` in a subprocess with its output streamed and kept in a log."""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import time


def parser(doc: str, config: str | None = "configs/default.py", *, seeds=None,
           workdir_root: bool = False) -> argparse.ArgumentParser:
  """The flags every benchmark takes: --config (required when `config` is None) and --json,
  with --seeds (default `seeds`) and --workdir-root for those that train runs. A benchmark
  adds only what it measures."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--config", default=config, required=config is None,
                      help="config file" + (f" (default {config})" if config else ""))
  parser.add_argument("--json", required=True, type=os.path.expanduser,
                      help="where to write the results (JSON)")
  if seeds is not None:
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
  if workdir_root:
    parser.add_argument("--workdir-root", required=True, type=os.path.expanduser,
                        help="the runs' workdirs go here")
  return parser


def parse(parser: argparse.ArgumentParser, argv, overrides: bool = True):
  """(args, the --config.FIELD=VALUE overrides) with --json and the overrides checked before
  anything runs; `overrides=False`: a benchmark that passes none on (any other argument is the
  parser's error)."""
  if not overrides:
    args = parser.parse_args(argv)
    checked_json(parser, args.json)
    return args, []
  args, extra = parser.parse_known_args(argv)
  checked_json(parser, args.json)
  return args, checked_overrides(parser, args.config, extra)


def machine() -> dict:
  """Where, with what and from which commit a result was measured (hardware.provenance)."""
  from fmnist_jax import hardware
  return hardware.provenance()


def machine_line(report: dict) -> str:
  """One line naming the machine of a report made from `machine()`."""
  return (f"{report['time']}; {report['device_kind']} x{report['device_count']} "
          f"({report['platform']}; host {report['processor']}, {report['cpu_count']} CPUs); "
          f"jax {report['versions'].get('jax')}, flax {report['versions'].get('flax')}")


def write(json_path, report: dict, markdown: str) -> pathlib.Path:
  """Writes the JSON (what benchmarks/results/ keeps; its index is made from the JSONs) and
  prints the markdown summary. Returns the JSON's path."""
  json_path = pathlib.Path(json_path)
  json_path.parent.mkdir(parents=True, exist_ok=True)
  json_path.write_text(json.dumps(report, indent=1) + "\n")
  print(markdown.rstrip("\n"), flush=True)
  return json_path


def run_main(config: str, workdir, overrides=(), log_path=None, env=None) -> float:
  """Runs `python -m fmnist_jax.main` to completion (with `env` added to the environment),
  echoing its output to this console and keeping it in `log_path` (default WORKDIR.log). On
  failure: exits with the child's last lines. Returns the process's wall-clock seconds."""
  workdir = pathlib.Path(workdir)
  log_path = pathlib.Path(log_path or f"{workdir}.log")
  log_path.parent.mkdir(parents=True, exist_ok=True)
  command = [sys.executable, "-m", "fmnist_jax.main", f"--config={config}",
             f"--workdir={workdir}", "--config.logging.write_report=False", *overrides]
  print(" ".join(command), flush=True)
  tail = collections.deque(maxlen=20)
  start = time.time()
  with open(log_path, "w") as log, subprocess.Popen(
      command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}) as child:
    for line in child.stdout:
      log.write(line)
      tail.append(line)
      print("  | " + line, end="", flush=True)
  seconds = time.time() - start
  if child.returncode != 0:
    sys.exit(f"error: {' '.join(command[:4])} ... exited with {child.returncode}; its last "
             f"lines (all in {log_path}):\n" + "".join(tail))
  return seconds


def run(config: str, workdir, overrides=(), log_path=None, env=None) -> dict:
  """One training run through `python -m fmnist_jax.main`, with the benchmarks' one clock and
  one reuse rule: a workdir that holds a finished run of the same config is reused (with the
  clocks of the process that made it, kept in WORKDIR.clocks.json); one of another config is
  refused. Returns the run's result.json with its evaluations (`rows`) and the clocks:

    training_seconds         the loop's start to its last evaluation, that evaluation included
                             and compilation excluded (airbench's convention)
    process_seconds          the process, start to exit
    process_seconds_to_end   the process's start to the end of training (result.json written)
  """
  from fmnist_jax import config_file, workdir as workdir_lib
  workdir = pathlib.Path(workdir)
  clocks_path = workdir.with_name(f"{workdir.name}.clocks.json")
  result = workdir_lib.read_result(workdir)
  if result is None:
    start = time.time()
    seconds = run_main(config, workdir, overrides, log_path, env)
    result = workdir_lib.read_result(workdir)
    clocks = {"process_seconds": seconds,
              "process_seconds_to_end": result["end_unix_time"] - start}
    clocks_path.write_text(json.dumps(clocks) + "\n")
  else:
    asked = config_file.load_with_overrides(config,
                                            ["--config.logging.write_report=False", *overrides])
    changes = workdir_lib.config_changes(workdir, asked)
    if changes:
      sys.exit(f"error: {workdir} finished with another config than the one asked for ("
               + "; ".join(f"{k} {old!r} there, {new!r} asked" for k, (old, new) in
                           changes.items()) + "): remove it or use another folder.")
    print(f"reusing the finished run in {workdir}", flush=True)
    clocks = json.loads(clocks_path.read_text()) if clocks_path.exists() else {}
  rows = workdir_lib.read_metrics(workdir, required=True)
  return {**result, **clocks, "rows": rows,
          "training_seconds": rows[-1]["elapsed_seconds"] - result["compile_seconds"]}


def without(overrides, paths) -> list[str]:
  """`overrides` less those of `paths` ("section.field"; config_flags takes a field's first
  override only, so a later one cannot replace it)."""
  return [o for o in overrides if o.removeprefix("--config.").split("=", 1)[0] not in paths]


def mean_std(values) -> list[float] | None:
  """fmnist_jax.population.mean_std, the one (imported when first used, so that importing
  this module stays light: benchmarks.results_index reads JSONs without jax)."""
  from fmnist_jax import population
  return population.mean_std(values)


def pm(value, scale: float = 1.0, digits: int = 2) -> str:
  """A mean_std pair as "mean ± std" (times `scale`), "–" for None."""
  if value is None:
    return "–"
  return f"{value[0] * scale:.{digits}f} ± {value[1] * scale:.{digits}f}"


def table(header, rows) -> list[str]:
  """A markdown table's lines: the header, its rule, one line per row (cells as given)."""
  return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
          *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def checked_overrides(parser, config: str, extra: list[str]) -> list[str]:
  """The `--config.SECTION.FIELD=VALUE` arguments a benchmark passes on, checked before
  anything runs (`check_arm`); any other argument is the parser's error."""
  unknown = [arg for arg in extra if not (arg.startswith("--config.") and "=" in arg)]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)} (besides its own flags, a "
                 "benchmark takes only --config.SECTION.FIELD=VALUE)")
  check_arm(parser, config, extra)
  return extra


def check_arm(parser, config: str, overrides: list[str]) -> None:
  """The parser's error, before anything trains, unless the config with these overrides is
  one `python -m fmnist_jax.main` would train: parsed as it parses them, then its checks
  (fields, population, a distillation's teacher). A benchmark with several arms checks each."""
  from fmnist_jax import config_file, configuration, distill, population
  from fmnist_jax.errors import ConfigError
  try:
    asked = config_file.load_with_overrides(config, overrides)
    configuration.validate_config(asked)
    population.check(asked)
    distill.check(asked)
  except ConfigError as e:
    parser.error(str(e).replace("\n", " "))


def checked_json(parser, path: str) -> str:
  """--json checked before anything is measured: a .json file whose folder can be written."""
  target = pathlib.Path(path)
  if target.suffix != ".json" or target.is_dir():
    parser.error(f"--json {path}: name a .json file for the results")
  folder = next(p for p in [target.parent, *target.parent.parents] if p.exists())
  if not folder.is_dir() or not os.access(folder, os.W_OK):
    parser.error(f"--json {path}: {folder} cannot be written")
  return path
