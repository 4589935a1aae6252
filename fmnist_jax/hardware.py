"""What machine this is: devices, host CPU, package versions, and the devices' peak FLOP/s.

Speed figures mean little without these, so every run (run_info.jsonl) and every benchmark
records them.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import subprocess
import sys

import jax

PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu", "flax",
            "optax", "orbax-checkpoint", "tensorflow-datasets", "tensorflow-cpu", "tensorflow",
            "ml-collections", "tensorboard", "numpy")

# Dense peak FLOP/s per device by device kind and compute dtype (vendor figures, on the matrix
# units). On NVIDIA GPUs, XLA's default precision lets cuDNN and cuBLAS run float32
# convolutions and matmuls on TF32 tensor cores, so float32's peak is TF32's.
PEAK_FLOPS = {
    "H100": {"float32": 495e12, "bfloat16": 989e12, "float16": 989e12},  # SXM
    "H200": {"float32": 495e12, "bfloat16": 989e12, "float16": 989e12},
    "A100": {"float32": 156e12, "bfloat16": 312e12, "float16": 312e12},
    "TPU v4": {"float32": 275e12, "bfloat16": 275e12, "float16": 275e12},
    "TPU v5 lite": {"float32": 197e12, "bfloat16": 197e12, "float16": 197e12},  # v5e
}


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


def source_revision() -> dict:
  """The git commit of the code that runs and whether its checkout had uncommitted changes
  (tracked files); where there is no git checkout (a copied tree), $FMNIST_JAX_COMMIT."""
  root = pathlib.Path(__file__).resolve().parents[1]

  def git(*args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          timeout=30).stdout.strip()
  try:
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
  except (OSError, subprocess.SubprocessError):
    commit, dirty = "", None
  return {"git_commit": commit or os.environ.get("FMNIST_JAX_COMMIT") or None,
          "git_dirty": dirty}


def provenance() -> dict:
  """Where, with what and from which code a result was measured: devices, host CPU, versions,
  XLA flags, git commit, the command and the time. Every benchmark JSON records it."""
  import time
  info = device_info()
  return {"platform": info["platform"], "device_kind": info["device_kind"],
          "device_count": info["device_count"], "processor": info["host_cpu"],
          "cpu_count": info["host_cpu_count"], "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "versions": package_versions(), **source_revision(),
          "command": " ".join(["python", *sys.orig_argv[1:]]),
          "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def device_memory_bytes(device) -> int | None:
  """What one device can hold: an accelerator's memory limit; a CPU device's, the host's
  available memory (shared by its simulated devices). None where unknown."""
  stats = getattr(device, "memory_stats", lambda: None)() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  try:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """One device's dense peak FLOP/s for `dtype` compute, or None where unknown (CPUs: the
  throughput benchmark measures a practical peak instead)."""
  for name, peaks in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def check_processes_agree(settings: dict) -> None:
  """Several processes: ConfigError on every process, before anything trains, if its
  settings ({name: JSON value}, e.g. each config path and the workdir) differ from process
  0's, naming the first that differs (processes that disagree train a wrong run, or wait on
  each other's saves for good). Each setting is compared by a hash of its JSON text."""
  if jax.process_count() == 1:
    return
  import hashlib
  import json
  import numpy as np
  from jax.experimental import multihost_utils
  from fmnist_jax.errors import ConfigError
  names = sorted(settings)
  mine = np.array([list(hashlib.sha256(json.dumps(settings[n], sort_keys=True).encode())
                        .digest()[:8]) for n in names], np.uint8)
  first = multihost_utils.broadcast_one_to_all(mine)  # (process 0's)
  differs = [i for i, (a, b) in enumerate(zip(mine, np.asarray(first))) if (a != b).any()]
  index = np.int32(differs[0] if differs else len(names))
  seen = np.asarray(multihost_utils.process_allgather(index))
  if (seen < len(names)).any():
    process = int(np.argmin(seen))
    name = names[int(seen.min())]
    raise ConfigError(
        f"process {process} of {jax.process_count()} was started with another {name} than "
        f"process 0" + (f" (this process's: {settings[name]})" if differs else "")
        + ": start every process with the same --config, overrides and --workdir.")
