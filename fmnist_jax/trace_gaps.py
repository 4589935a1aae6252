"""Where the device waited, and what the host was doing then: a summary of a profile trace.

    python -m fmnist_jax.main --config configs/default.py --workdir runs/p \
        --config.logging.profile_steps="(2000, 3000)"
    python -m fmnist_jax.trace_gaps runs/p [--top 10] [--json trace_gaps.json]

Reads the newest perfetto_trace.json.gz under WORKDIR/plugins/profile/ (or the trace file
given). The device's busy time is the union of the events on its lanes: the /device:* processes
of a GPU or TPU trace; on a CPU, XLA's own threads (tf_XLA*), which run the programs. Between
its first and last event, every moment no lane is busy is idle, and each gap is put down to the
outermost host events of the loop's thread (the thread that calls the compiled functions: its
outermost events are the loop's named phases, "train calls", "evaluation", "checkpoints", ...,
or JAX's own calls made outside them); time that no host event covers is the loop's Python.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import zlib

from fmnist_jax import hardware

UNTRACED = "(Python between traced calls)"


def find_trace(path) -> pathlib.Path:
  """The trace file itself, or the newest perfetto trace under a workdir."""
  path = pathlib.Path(path)
  if path.is_file():
    return path
  traces = sorted(path.glob("plugins/profile/*/perfetto_trace.json.gz"))
  if not traces:
    raise SystemExit(f"error: no plugins/profile/*/perfetto_trace.json.gz under {path}: run "
                     "with --config.logging.profile_steps=(FIRST, LAST) to write one.")
  return traces[-1]


def load_lanes(trace_path) -> tuple[list, list, str]:
  """(device intervals, the loop thread's events as (start, end, name), which device)."""
  opener = gzip.open if str(trace_path).endswith(".gz") else open
  try:
    with opener(trace_path, "rt") as f:
      events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
  except (OSError, EOFError, ValueError, KeyError, zlib.error) as e:
    raise SystemExit(f"error: {trace_path} is not a readable trace ({type(e).__name__}: "
                     f"{str(e)[:120]}): give a workdir or its perfetto_trace.json.gz.") from None
  processes, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      processes[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  spans = [e for e in events if e.get("ph") == "X"]
  device_pids = {pid for pid, name in processes.items() if name.startswith("/device:")}
  if device_pids:
    kind = ", ".join(sorted(processes[pid] for pid in device_pids))
    on_device = [e for e in spans if e["pid"] in device_pids]
  else:
    kind = "CPU (XLA's threads)"
    on_device = [e for e in spans if threads.get((e["pid"], e.get("tid")), "").startswith(
        "tf_XLA")]
  calls = collections.Counter((e["pid"], e.get("tid")) for e in spans
                              if e["name"].startswith("PjitFunction("))
  if not on_device or not calls:
    raise SystemExit(f"error: {trace_path} has no device events or no compiled calls: was "
                     "the trace's window inside the training (logging.profile_steps)?")
  loop_thread = calls.most_common(1)[0][0]
  host = [(e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in spans
          if (e["pid"], e.get("tid")) == loop_thread]
  device = [(e["ts"], e["ts"] + e.get("dur", 0)) for e in on_device]
  return device, host, kind


def idle_gaps(device: list) -> tuple[list, float, float]:
  """The gaps between the merged busy intervals, and the window's start and end (µs)."""
  device = sorted(device)
  gaps, start, busy_until = [], device[0][0], device[0][1]
  for begin, end in device[1:]:
    if begin > busy_until:
      gaps.append((busy_until, begin))
    busy_until = max(busy_until, end)
  return gaps, start, busy_until


def outermost(host: list) -> list:
  """The host events not nested in another one (the loop's phases, and calls outside them)."""
  result = []
  for begin, end, name in sorted(host, key=lambda e: (e[0], -e[1])):
    if result and end <= result[-1][1]:
      continue
    result.append((begin, end, name))
  return result


def attribute(gap: tuple, host: list) -> dict[str, float]:
  """µs of the gap under each outermost host event; the rest under UNTRACED."""
  begin, end = gap
  shares = collections.defaultdict(float)
  for b, e, name in host:
    overlap = min(e, end) - max(b, begin)
    if overlap > 0:
      shares[name] += overlap
  covered = sum(shares.values())
  if end - begin - covered > 0:
    shares[UNTRACED] += end - begin - covered
  return shares


def summarize(trace_path, top: int = 10) -> dict:
  device, host, kind = load_lanes(trace_path)
  gaps, start, end = idle_gaps(device)
  host = outermost(host)
  by_host = collections.defaultdict(float)
  listed = []
  for gap in sorted(gaps, key=lambda g: g[0] - g[1]):  # longest first
    shares = attribute(gap, host)
    for name, us in shares.items():
      by_host[name] += us
    if len(listed) < top:
      listed.append({"at_ms": round((gap[0] - start) / 1e3, 3),
                     "ms": round((gap[1] - gap[0]) / 1e3, 3),
                     "host": max(shares, key=shares.get)})
  window, idle = end - start, sum(g[1] - g[0] for g in gaps)
  return {"trace": str(trace_path), "device": kind, "window_ms": round(window / 1e3, 3),
          "busy_percent": round(100 * (window - idle) / max(window, 1e-9), 2),
          "idle_ms": round(idle / 1e3, 3), "gaps": len(gaps),
          "idle_ms_by_host_work": {name: round(us / 1e3, 3) for name, us in sorted(
              by_host.items(), key=lambda kv: -kv[1])},
          "longest_gaps": listed}


def markdown(summary: dict) -> str:
  lines = [f"# Device idle time: {summary['trace']}", "",
           f"{summary['device']}: busy {summary['busy_percent']}% of {summary['window_ms']} ms; "
           f"{summary['idle_ms']} ms idle in {summary['gaps']} gaps.", "",
           "| host work during the gaps | idle ms |", "| --- | --- |"]
  lines += [f"| {name} | {ms} |" for name, ms in summary["idle_ms_by_host_work"].items()]
  lines += ["", "| longest gaps: at ms | ms | host work |", "| --- | --- | --- |"]
  lines += [f"| {g['at_ms']} | {g['ms']} | {g['host']} |" for g in summary["longest_gaps"]]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("path", type=os.path.expanduser,
                      help="a workdir (its newest trace) or a perfetto_trace.json.gz")
  parser.add_argument("--top", type=int, default=10, help="how many of the longest gaps to list")
  parser.add_argument("--json", type=os.path.expanduser,
                      help="also write the summary here, as JSON")
  args = parser.parse_args(argv)
  if args.top < 0:
    parser.error(f"--top {args.top}: give how many gaps to list (0 or more)")
  if args.json and not pathlib.Path(args.json).parent.is_dir():
    parser.error(f"--json {args.json}: its folder {pathlib.Path(args.json).parent} does not "
                 "exist; make it, or name another")
  summary = summarize(find_trace(args.path), args.top)
  text = markdown(summary)
  if args.json:
    summary["machine"] = hardware.provenance()
    pathlib.Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
  print(text)


if __name__ == "__main__":
  main()
