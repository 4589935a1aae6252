"""Images per second of the seed CNN's train and eval steps: `python -m benchmarks.throughput`.

    python -m benchmarks.throughput --json benchmarks/results/cpu.json [--batch-sizes 128 512]
        [--quick] [--cpu-devices 2]

Measures the compiled steps of fmnist_jax itself (train.train_steps / train.eval_step, compiled
by parallel.Parallelism) on synthetic data already in memory: compile time separately, then
warm-up steps, then timed steps; the median of `--repeats` timings. Sweeps batch size,
parallelism (jit, pmap), input mode (device: batches gathered on device from a resident split;
host: a numpy batch handed to the devices every call, the most a host pipeline can deliver),
steps per compiled call (lax.scan) and compute dtype.

FLOPs per image come from XLA's cost analysis of the compiled step; the roofline percentage
divides images/s x FLOPs/image by the device's peak (PEAK_FLOPS; the CPU's own from a measured
float32 matmul). Imports no TensorFlow: runs where only jax/flax/optax are installed.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import pathlib
import statistics
import sys
import time


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", required=True, help="where to write the results (JSON)")
  parser.add_argument("--markdown", help="markdown table path (default: JSON path with .md)")
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
  parser.add_argument("--parallelism", nargs="+", default=["jit", "pmap"])
  parser.add_argument("--input-modes", nargs="+", default=["device", "host"])
  parser.add_argument("--steps-per-call", type=int, nargs="+", default=[1, 10])
  parser.add_argument("--microbatches", type=int, nargs="+", default=[1],
                      help="chunks per batch inside a step (config.microbatches)")
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--conv-impls", nargs="+", default=["xla", "im2col"],
                      help="training convolution forms (evaluation always uses xla)")
  parser.add_argument("--train-images", type=int, default=25_600,
                      help="training images timed per repeat")
  parser.add_argument("--eval-images", type=int, default=51_200)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--cpu-devices", type=int, default=0,
                      help="simulate N CPU devices (sets XLA_FLAGS before jax starts)")
  parser.add_argument("--quick", action="store_true",
                      help="a fast smoke run: one batch size, few images, one repeat")
  args = parser.parse_args(argv)
  if args.quick:
    args.batch_sizes = args.batch_sizes[:1]
    args.train_images, args.eval_images, args.repeats = 4 * args.batch_sizes[0], \
        8 * args.batch_sizes[0], 1
    args.steps_per_call = [s for s in args.steps_per_call if s <= 2] or [1]
  return args


# Dense peak FLOP/s per device by device kind (vendor figures; bf16 uses the matrix units).
PEAK_FLOPS = {
    "H100": {"float32": 67e12, "bfloat16": 989e12},   # SXM; fp32 without tensor cores
    "H200": {"float32": 67e12, "bfloat16": 989e12},
    "A100": {"float32": 19.5e12, "bfloat16": 312e12},
    "TPU v4": {"float32": 275e12, "bfloat16": 275e12},
    "TPU v5 lite": {"float32": 197e12, "bfloat16": 197e12},  # v5e
}


def measured_cpu_peak(jax, jnp) -> float:
  """float32 matmul FLOP/s of one CPU device: a practical peak for this machine."""
  n = 1024
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    for _ in range(10):
      out = matmul(a)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - start) / 10)
  return 2 * n ** 3 / best


def device_peak(jax, jnp, device_kind: str, dtype: str) -> float | None:
  if jax.devices()[0].platform == "cpu":
    return None  # filled in once per run (measured)
  for name, peaks in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return peaks[dtype]
  return None


def _flops(compiled) -> float | None:
  try:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0]
    return float(analysis["flops"])
  except Exception:  # Not every backend reports costs.
    return None


def _batch_shapes(jax, np, leading, mask=False):
  """Abstract global batch in the jit layout, for XLA's cost analysis."""
  shapes = {"image": jax.ShapeDtypeStruct(leading + (28, 28, 1), np.uint8),
            "label": jax.ShapeDtypeStruct(leading, np.int32)}
  if mask:
    shapes["mask"] = jax.ShapeDtypeStruct(leading, np.float32)
  return shapes


def _time(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def main(argv=None):
  args = _parse_args(argv)
  if args.cpu_devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.cpu_devices}")
  import jax
  import jax.numpy as jnp
  import numpy as np

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from configs import default
  from fmnist_jax import input_pipeline, models, run_info, train
  from fmnist_jax.parallel import Parallelism

  devices = jax.devices()
  info = run_info.device_info()
  cpu_peak = measured_cpu_peak(jax, jnp) if info["platform"] == "cpu" else None
  rng = np.random.default_rng(0)
  num_examples = 8192
  images = rng.integers(0, 256, (num_examples, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, num_examples).astype(np.int32)

  results = []
  flops_cache = {}  # XLA's FLOPs of the jit-compiled step; the same computation under pmap
  for dtype in args.dtypes:
    peak = cpu_peak if cpu_peak else device_peak(jax, jnp, info["device_kind"], dtype)
    for mode in args.parallelism:
      par = Parallelism(mode, devices)
      for batch_size in args.batch_sizes:
        if batch_size % par.num_devices:
          print(f"skip batch {batch_size}: not divisible by {par.num_devices} devices")
          continue
        config = default.get_config()
        config.dtype, config.batch_size = dtype, batch_size
        model = models.create_model(config, conv_impl="xla")
        tx = train.create_optimizer(config, config.learning_rate)
        base_state = par.replicate(train.create_train_state(config, model, tx))
        common = {"batch_size": batch_size, "dtype": dtype, "parallelism": mode,
                  "devices": par.num_devices}

        # --- train -------------------------------------------------------------------------
        for conv_impl, input_mode in itertools.product(args.conv_impls, args.input_modes):
          common["conv_impl"] = conv_impl
          conv_state = base_state.replace(
              apply_fn=models.create_model(config, conv_impl=conv_impl).apply)
          for steps_per_call, microbatches in itertools.product(args.steps_per_call,
                                                                args.microbatches):
            if batch_size % (microbatches * par.num_devices):
              continue
            common["microbatches"] = microbatches
            calls = max(1, args.train_images // (batch_size * steps_per_call))
            train_fn = par.compile_train(functools.partial(
                train.train_steps, options=train.StepOptions(microbatches=microbatches)))
            if input_mode == "device":
              data = input_pipeline.DeviceTrainData(images, labels, par, batch_size, 0)
              index = par.replicate(
                  rng.integers(0, num_examples, (steps_per_call, batch_size)))
              next_batch = functools.partial(data._gather, data.data, index)
            else:
              host = {"image": images[:steps_per_call * batch_size].reshape(
                          steps_per_call, batch_size, 28, 28, 1),
                      "label": labels[:steps_per_call * batch_size].reshape(
                          steps_per_call, batch_size)}
              next_batch = functools.partial(par.shard, host, batch_axis=1)
            state = jax.tree.map(lambda x: x.copy(), conv_state)
            start = time.perf_counter()
            state, metrics = train_fn(state, next_batch())
            jax.block_until_ready(metrics)
            compile_seconds = time.perf_counter() - start
            # XLA's cost analysis counts a loop body once: take one step's FLOPs, times k.
            key = ("train", conv_impl, dtype, batch_size)
            if key not in flops_cache:
              flops_cache[key] = _flops(
                  jax.jit(functools.partial(train.train_steps, axis_name=None))
                  .lower(conv_state, _batch_shapes(jax, np, (1, batch_size))).compile())
            flops = flops_cache[key] and flops_cache[key] * steps_per_call
            for _ in range(max(1, 20 // steps_per_call)):  # warm-up
              state, metrics = train_fn(state, next_batch())
            jax.block_until_ready(metrics)

            def run():
              nonlocal state
              out = None
              for _ in range(calls):
                state, out = train_fn(state, next_batch())
              jax.block_until_ready(out)
            times = _time(run, args.repeats)
            per_second = [calls * steps_per_call * batch_size / t for t in times]
            results.append(_entry("train", common, input_mode, steps_per_call, per_second,
                                  compile_seconds, flops, steps_per_call * batch_size, peak,
                                  bool(cpu_peak)))
            print(_line(results[-1]), flush=True)

        # --- eval --------------------------------------------------------------------------
        common["conv_impl"], common["microbatches"] = "xla", 1
        eval_fn = par.compile_eval(functools.partial(train.eval_step, apply_fn=model.apply))
        batch = input_pipeline.eval_batches(images[:batch_size], labels[:batch_size], par,
                                            batch_size)[0]
        start = time.perf_counter()
        jax.block_until_ready(eval_fn(base_state.params, batch))
        compile_seconds = time.perf_counter() - start
        key = ("eval", dtype, batch_size)
        if key not in flops_cache:
          flops_cache[key] = _flops(
              jax.jit(functools.partial(train.eval_step, apply_fn=model.apply, axis_name=None))
              .lower(base_state.params, _batch_shapes(jax, np, (batch_size,), mask=True))
              .compile())
        flops = flops_cache[key]
        calls = max(1, args.eval_images // batch_size)
        for _ in range(10):
          jax.block_until_ready(eval_fn(base_state.params, batch))

        def run_eval():
          out = [eval_fn(base_state.params, batch) for _ in range(calls)]
          jax.block_until_ready(out)
        times = _time(run_eval, args.repeats)
        per_second = [calls * batch_size / t for t in times]
        results.append(_entry("eval", common, "device", 1, per_second, compile_seconds, flops,
                              batch_size, peak, bool(cpu_peak)))
        print(_line(results[-1]), flush=True)

  report = {"platform": info["platform"], "device_kind": info["device_kind"],
            "device_count": info["device_count"], "processor": info["host_cpu"],
            "cpu_count": info["host_cpu_count"], "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "cpu_matmul_flops": cpu_peak, "versions": run_info.package_versions(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:] if argv is None
            else argv, "results": results}
  json_path = pathlib.Path(args.json)
  json_path.parent.mkdir(parents=True, exist_ok=True)
  json_path.write_text(json.dumps(report, indent=2))
  markdown = pathlib.Path(args.markdown) if args.markdown else json_path.with_suffix(".md")
  markdown.write_text(to_markdown(report))
  print(f"wrote {json_path} and {markdown}")
  return report


def _entry(step, common, input_mode, steps_per_call, per_second, compile_seconds, flops,
           images_per_call, peak, machine_peak):
  median = statistics.median(per_second)
  flops_per_image = flops / images_per_call if flops else None
  # Simulated CPU devices share one machine, whose measured peak is the whole budget.
  total_peak = peak if machine_peak else (peak or 0) * common["devices"]
  roofline = (100 * median * flops_per_image / total_peak
              if flops_per_image and total_peak else None)
  return {"step": step, **common, "input_mode": input_mode, "steps_per_call": steps_per_call,
          "images_per_second": median, "repeats": per_second,
          "compile_seconds": compile_seconds, "flops_per_image": flops_per_image,
          "roofline_percent": roofline}


def _line(r) -> str:
  roofline = f"{r['roofline_percent']:.1f}%" if r["roofline_percent"] else "n/a"
  return (f"{r['step']:5s} {r['parallelism']:4s} {r['devices']}dev b{r['batch_size']:<5d} "
          f"{r['conv_impl']:6s} "
          f"{r['dtype']:8s} {r['input_mode']:6s} x{r['steps_per_call']:<3d} "
          f"mb{r.get('microbatches', 1):<3d} "
          f"{r['images_per_second']:>12,.0f} img/s  roofline {roofline}  "
          f"compile {r['compile_seconds']:.1f}s")


def to_markdown(report) -> str:
  lines = [f"# Throughput: {report['device_kind']} x{report['device_count']} "
           f"({report['platform']}; host {report.get('processor')}, {report.get('cpu_count')} "
           "CPUs)", "",
           f"{report['time']}; jax {report['versions'].get('jax')}, flax "
           f"{report['versions'].get('flax')}; XLA_FLAGS={report['xla_flags'] or '(none)'}", "",
           "| step | parallelism | devices | batch | conv | dtype | input | steps/call | "
           "microbatches | images/s | % of peak | compile s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in report["results"]:
    roofline = f"{r['roofline_percent']:.1f}" if r["roofline_percent"] else "–"
    lines.append(f"| {r['step']} | {r['parallelism']} | {r['devices']} | {r['batch_size']} | "
                 f"{r['conv_impl']} | {r['dtype']} | {r['input_mode']} | {r['steps_per_call']} | "
                 f"{r.get('microbatches', 1)} | {r['images_per_second']:,.0f} | {roofline} | {r['compile_seconds']:.1f} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
