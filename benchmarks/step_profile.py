"""Where the train step's time goes, by part of the network: `python -m benchmarks.step_profile`.

    python -m benchmarks.step_profile --json benchmarks/results/step_profile_cpu.json \
        [--config configs/default.py] [--batch-sizes 128 512] [--calls 5]

Compiles the loop's own train call (steps.train_call: the config's steps per call and
micro-batches, one device), runs it under jax.profiler, and charges each XLA operation's
time in the trace (exclusive of the operations it encloses) to a part of the step, named from
the JAX source of the HLO instruction (its op_name metadata): the convolutions' matmuls, the
im2col patches, max-pooling, dropout's random bits, the dense layers, the loss, the optimizer
and EMA, the step's bookkeeping, and copies XLA added with no source. Each part's FLOPs come
from the layer shapes (models.flops_per_image), so GFLOP/s says which parts compute and which
only move memory. "threads busy" is the operations' summed time (traced) over the untraced wall
time times the CPU threads: what is left is the runtime's scheduling and waiting (the profiler
adds its own cost to the operations, so this is an upper bound).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

from benchmarks import common

# (part, pattern on the op_name), first match wins; the order matters (a Dropout inside a
# convolution's scope is dropout, a conv's slice is its patches).
PARTS = (
    ("dropout: random bits and masks", r"Dropout_"),
    ("convolutions: forward matmuls", r"^(?!.*transpose\().*conv\d/dot_general"),
    ("convolutions: gradient matmuls", r"transpose\(.*conv\d/dot_general"),
    ("convolutions: im2col patches", r"conv\d/(slice|concatenate)"),
    ("convolutions: input gradient shift-back", r"transpose\(.*(pad|conv\d/add|_conv/add)"),
    ("max-pool, bias, ReLU (forward and gradient)", r"CNN\._conv/"),
    ("dense layers (forward and gradient)", r"(dense1|logits)/"),
    ("loss (softmax cross-entropy)", r"jvp\(\)|log_softmax|take_along_axis|logsumexp"),
    # The optimizer's updates carry no name of their own (they are adds and multiplies of the
    # step's scope), so they share a part with the step's elementwise bookkeeping.
    ("optimizer, EMA and bookkeeping (finiteness, step masks, metric sums)",
     r"is_finite|reduce_and|_where|/(add|sub|div|mul|sqrt|select_n|convert_element_type|eq|"
     r"integer_pow|max|pow|sum|reduce_sum)$|argmax"),
    ("copies and layouts XLA added (no source op)", r"^\(none\)"),
)
OTHER = "other"


def _parse_args(argv):
  parser = common.parser(__doc__)
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
  parser.add_argument("--calls", type=int, default=5, help="train calls traced per batch size")
  args, _ = common.parse(parser, argv, overrides=False)
  if args.calls < 1 or min(args.batch_sizes) < 1:
    parser.error("--calls and --batch-sizes must be positive")
  return args


def op_sources(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the JAX source it came from (op_name), "(none)" for XLA's own."""
  sources = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if match:
      source = re.search(r'op_name="([^"]*)"', line)
      sources[match.group(1)] = source.group(1) if source else "(none)"
  return sources


def exclusive_times(trace_events, names) -> collections.Counter:
  """Microseconds per HLO instruction, each event's time less that of the events it encloses
  on its thread (a while loop's time is its body's operations, counted once)."""
  by_thread = collections.defaultdict(list)
  for event in trace_events:
    if event.get("ph") == "X":
      by_thread[(event["pid"], event["tid"])].append(event)
  times = collections.Counter()
  for events in by_thread.values():
    events.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack, inner = [], collections.Counter()
    for index, event in enumerate(events):
      while stack and events[stack[-1]]["ts"] + events[stack[-1]]["dur"] <= event["ts"]:
        stack.pop()
      if stack:
        inner[stack[-1]] += event["dur"]
      stack.append(index)
    for index, event in enumerate(events):
      if event["name"] in names:
        times[event["name"]] += event["dur"] - inner[index]
  return times


def part_of(source: str) -> str:
  for part, pattern in PARTS:
    if re.search(pattern, source):
      return part
  return OTHER


def part_flops(config, batch_size: int) -> dict[str, float]:
  """FLOPs per step of the parts that compute: the layers' forward and gradient matmuls."""
  from fmnist_jax import models
  forward = models.flops_per_image(config, train=False)
  training = models.flops_per_image(config, train=True)
  # The dense layers alone: the same count with the convolutions' output as their input.
  size, channels = 28, 1
  for i, features in enumerate(config.model.conv_features):
    size, channels = (size - 2) // (2 if i < 2 else 1), features
  dense_forward = 2 * (size * size * channels * config.model.dense_features
                       + config.model.dense_features * config.model.num_classes)
  conv_forward = forward - dense_forward
  return {"convolutions: forward matmuls": batch_size * conv_forward,
          "convolutions: gradient matmuls": batch_size * (training - forward - 2 * dense_forward),
          "dense layers (forward and gradient)": batch_size * 3 * dense_forward}


def profile(config, batch_size: int, calls: int) -> dict:
  """Traces `calls` warm train calls at `batch_size`; the parts' times per step."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from fmnist_jax import population, steps
  config = config.copy_and_resolve_references()
  config.run.batch_size = batch_size
  found = population.members(config)  # (one member: the training loop's program for it)
  options = population.step_options(
      config, found, steps.StepOptions.from_config(config, 1, jax.default_backend()))
  k = config.parallelism.steps_per_call
  rng = np.random.default_rng(0)
  batches = {"image": jnp.asarray(rng.integers(0, 256, (k, 1, batch_size, 28, 28, 1), np.uint8)),
             "label": jnp.asarray(rng.integers(0, 10, (k, 1, batch_size), np.int32))}
  state = population.initial_state(config, found, 100, 1000)
  sums = jax.tree.map(jnp.asarray, steps.zero_metrics(len(found)))
  call = jax.jit(lambda s, b, m: population.train_call(s, b, m, jnp.int32(k), options=options),
                 donate_argnums=(0,)).lower(state, batches, sums).compile()
  for _ in range(3):  # warm-up
    state, sums = call(state, batches, sums)
  walls = []
  for _ in range(3):  # untraced: the profiler's own cost inflates the traced wall time
    start = time.perf_counter()
    for _ in range(calls):
      state, sums = call(state, batches, sums)
    jax.block_until_ready(sums)
    walls.append(time.perf_counter() - start)
  wall = sorted(walls)[1]
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(calls):
        state, sums = call(state, batches, sums)
      jax.block_until_ready(sums)
    path = sorted(glob.glob(os.path.join(trace_dir, "plugins/profile/*/*.trace.json.gz")))[-1]
    with gzip.open(path, "rt") as f:
      events = json.load(f)["traceEvents"]
  sources = op_sources(call.as_text())
  steps_run = calls * k
  parts = collections.Counter()
  for name, micros in exclusive_times(events, sources).items():
    parts[part_of(sources[name])] += micros / 1e3 / steps_run
  flops = part_flops(config, batch_size)
  total = sum(parts.values())
  rows = [{"part": part, "ms_per_step": round(ms, 3), "share": round(ms / total, 4),
           "gflop_per_step": round(flops.get(part, 0) / 1e9, 4),
           "gflop_per_second": round(flops[part] / ms / 1e6, 1) if part in flops else None}
          for part, ms in parts.most_common()]
  threads = os.cpu_count() or 1
  return {"batch_size": batch_size, "microbatches": options.microbatches,
          "steps_per_call": k, "steps_traced": steps_run,
          "wall_ms_per_step": round(wall * 1e3 / steps_run, 3),
          "images_per_second": round(batch_size * steps_run / wall, 1),
          "op_ms_per_step": round(total, 3),
          "threads_busy": round(total / (wall * 1e3 / steps_run) / threads, 3), "parts": rows}


def markdown(results) -> str:
  lines = []
  for r in results:
    lines += [f"\nbatch {r['batch_size']} ({r['microbatches']} micro-batches): "
              f"{r['wall_ms_per_step']:.1f} ms/step untraced ({r['images_per_second']:,.0f} "
              f"images/s); operations {r['op_ms_per_step']:.1f} ms/step summed over threads "
              f"(traced), threads busy {100 * r['threads_busy']:.0f}%\n"]
    lines += common.table(
        ["part", "ms/step", "share", "GFLOP/step", "GFLOP/s"],
        [[p["part"], f"{p['ms_per_step']:.2f}", f"{100 * p['share']:.1f}%",
          p["gflop_per_step"] or "", p["gflop_per_second"] or ""] for p in r["parts"]])
  return "\n".join(lines)


def main(argv=None):
  args = _parse_args(argv)
  from fmnist_jax import config_file
  config = config_file.load(args.config)
  report = {**common.machine(), "config": args.config, "calls": args.calls}
  results = [profile(config, b, args.calls) for b in args.batch_sizes]
  report["results"] = results
  common.write(args.json, report, common.machine_line(report) + "\n" + markdown(results))


if __name__ == "__main__":
  main()
