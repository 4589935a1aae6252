"""What a run records in its workdir so it can be understood and reproduced from it alone."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import socket
import sys

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
            "tensorflow-cpu", "tensorflow", "ml-collections", "clu", "numpy")


def package_versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def host_cpu() -> str:
  """The host CPU's model name (platform.processor() is often empty on Linux): speed figures
  on "cpu" mean little without it."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def device_info() -> dict:
  devices = jax.devices()
  return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
          "device_count": len(devices), "local_device_count": jax.local_device_count(),
          "process_count": jax.process_count(), "host_cpu": host_cpu(),
          "host_cpu_count": os.cpu_count()}


def prepare_workdir(workdir: str) -> pathlib.Path:
  """Creates the workdir if needed; a clear error if it is a file or cannot be written."""
  path = pathlib.Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f"--workdir {workdir} exists and is not a directory: "
                             "pass a directory (it is created if missing).")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"Cannot create --workdir {workdir}: {e.strerror}.") from e
  if not os.access(path, os.W_OK | os.X_OK):
    raise PermissionError(f"--workdir {workdir} is not writable: pick another directory or "
                          "fix its permissions.")
  return path


def record(workdir: pathlib.Path, config, par, **extra) -> None:
  """Writes config.json (the resolved config) and appends this start to run_info.jsonl."""
  config_json = config.to_json_best_effort(indent=2, sort_keys=True)
  config_path = workdir / "config.json"
  if config_path.exists() and config_path.read_text() != config_json:
    # A resumed run with a changed config: keep the original, record the new one beside it.
    config_path = workdir / f"config.step{extra.get('start_step', 0)}.json"
  if not config_path.exists():
    config_path.write_text(config_json)
  info = {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "host": socket.gethostname(), "argv": sys.argv, "parallelism": par.mode,
          **device_info(), "versions": package_versions(), **extra}
  with open(workdir / "run_info.jsonl", "a") as f:
    f.write(json.dumps(info) + "\n")


METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """The rows the training loop wrote to WORKDIR/metrics.jsonl, one per evaluation ([] if
  none yet)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
