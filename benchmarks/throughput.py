"""Images per second of the train and eval steps: `python -m benchmarks.throughput`.

    python -m benchmarks.throughput --json benchmarks/results/cpu.json [--batch-sizes 128 512]
        [--cpu-devices 2] [--config configs/default.py | --config-json RUN/config.json]
    python -m benchmarks.throughput --json /tmp/quick.json --quick   # one setting

Measures the compiled programs the training loop itself runs (steps.train_call and
steps.eval_step, compiled by parallel.Parallelism) on synthetic data already in memory:
compile time separately, then warm-up calls, then timed calls; the median of `--repeats`
timings. Sweeps batch size, parallelism (jit, pmap), input mode (device: batches gathered on
device from a resident split; host: a numpy batch handed to the devices every call, the most a
host pipeline can deliver), steps per compiled call (lax.scan), micro-batches and dtype. The
model is the config's (default: configs/default.py; a run's config.json measures that run).

`--members 1 4 16 64`: populations (fmnist_jax.population) of N models as one program, against
one model (N = 1); images/s are summed over the members.

FLOPs per image are counted from the layer shapes (models.flops_per_image); "% of peak" divides
images/s x FLOPs/image by the devices' peak (hardware.PEAK_FLOPS; on CPU, a measured float32
matmul). XLA's own count (cost analysis, which misses cuDNN's convolutions on GPU) is shown
beside it. Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import statistics
import sys
import time


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", required=True, help="where to write the results (JSON)")
  parser.add_argument("--config", default="configs/default.py", help="config file (the model)")
  parser.add_argument("--config-json", help="a run's resolved config.json instead of --config")
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
  parser.add_argument("--parallelism", nargs="+", default=["jit", "pmap"])
  parser.add_argument("--input-modes", nargs="+", default=["device", "host"])
  parser.add_argument("--steps-per-call", type=int, nargs="+", default=[1, 10])
  parser.add_argument("--microbatches", type=int, nargs="+", default=[1],
                      help="chunks per batch inside a step (config.parallelism.microbatches)")
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--conv-impls", nargs="+", default=["xla", "im2col"],
                      help="training convolution forms (evaluation always uses xla)")
  parser.add_argument("--members", type=int, nargs="+", default=[1],
                      help="population sizes (fmnist_jax.population: N models, seeds 0..N-1, "
                      "as one program; 1: the single-model program); images/s are summed over "
                      "members")
  parser.add_argument("--members-per-pass", type=int, nargs="+", default=[0],
                      help="population members side by side (vmap) per pass, passes in "
                      "sequence (lax.map); 0: all in one pass (config.population.per_pass)")
  parser.add_argument("--train-images", type=int, default=25_600,
                      help="training images timed per repeat")
  parser.add_argument("--eval-images", type=int, default=51_200)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--cpu-devices", type=int, default=0,
                      help="simulate N CPU devices (sets XLA_FLAGS before jax starts)")
  parser.add_argument("--quick", action="store_true",
                      help="a smoke run in well under a minute: the first of each list, one "
                      "step per call, few images, one repeat")
  args = parser.parse_args(argv)
  from benchmarks import common
  common.checked_json(parser, args.json)
  for name in ("batch_sizes", "steps_per_call", "microbatches", "members"):
    if any(value < 1 for value in getattr(args, name)):
      parser.error(f"--{name.replace('_', '-')} must be positive integers")
  if min(args.train_images, args.eval_images, args.repeats) < 1:
    parser.error("--train-images, --eval-images and --repeats must be positive")
  try:
    load_config(args)
  except (OSError, ValueError) as e:  # (a damaged --config-json; ConfigError is a ValueError)
    parser.error(f"cannot read the config: {str(e).splitlines()[0][:200]}")
  if args.quick:
    for name in ("batch_sizes", "parallelism", "input_modes", "microbatches", "dtypes",
                 "conv_impls", "members"):
      setattr(args, name, getattr(args, name)[:1])
    args.steps_per_call = [1]
    args.train_images, args.eval_images, args.repeats = 4 * args.batch_sizes[0], \
        8 * args.batch_sizes[0], 1
  return args


def load_config(args):
  """The benchmarked model's config: a config file, or a run's resolved config.json."""
  if args.config_json:  # (laid over today's defaults, as a workdir's config.json is read)
    from fmnist_jax import workdir as workdir_lib
    with open(args.config_json) as f:
      return workdir_lib.layered(json.load(f), args.config_json)
  from fmnist_jax import config_file
  return config_file.load(args.config)


def measured_cpu_peak() -> float:
  """float32 matmul FLOP/s of one CPU device: a practical peak for this machine."""
  import jax
  import jax.numpy as jnp
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


def xla_flops(jitted, *args) -> float | None:
  """XLA's cost-analysis FLOPs of one call, where the backend reports them."""
  try:
    analysis = jitted.lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0]
    return float(analysis["flops"])
  except Exception:  # Not every backend reports costs.
    return None


def _timed(call, calls: int, repeats: int, images_per_call: int) -> list[float]:
  """Images/s of `calls` calls of `call()` (which returns arrays to wait for), per repeat."""
  import jax
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = call()
    jax.block_until_ready(out)
    rates.append(calls * images_per_call / (time.perf_counter() - start))
  return rates


def initial(config, members: int, conv_impl: str):
  """(the members, their initial state on the host): `members` seeds 0..members-1 (one: the
  single run the training loop compiles)."""
  from fmnist_jax import population
  found = [{"seed": seed} for seed in range(members)]
  return found, population.initial_state(config, found, 1, 1, conv_impl=conv_impl)


def measure_train(setting: dict, config, par, data, host_batch, repeats: int, images: int):
  """One train setting: the loop's own compiled call, fed from device or host."""
  import jax
  import numpy as np
  from fmnist_jax import population, steps
  k, batch_size, members = setting["steps_per_call"], setting["batch_size"], setting["members"]
  found, state = initial(config, members, setting["conv_impl"])
  options = population.step_options(config, found, steps.StepOptions(
      microbatches=setting["microbatches"]))
  train_fn = par.compile_train(functools.partial(
      population.train_call, options=options, per_pass=setting["members_per_pass"] or 0),
      batch_axis=2, num_extra=2)
  state = par.place_state(state)
  sums = par.place_state(steps.zero_metrics(members))
  active = np.int32(k)
  if setting["input_mode"] == "device":
    order = data.epoch_order(0, k)
    next_batch = functools.partial(data.gather, data.data, order, 0, k)
  else:
    next_batch = functools.partial(par.shard, host_batch, batch_axis=2)
  holder = {"state": state}

  def call():
    holder["state"], out = train_fn(holder["state"], next_batch(), sums, active)
    return out
  start = time.perf_counter()
  jax.block_until_ready(call())
  compile_seconds = time.perf_counter() - start
  _timed(call, max(1, 20 // (k * members)), 1, 1)  # warm-up
  calls = max(1, images // (batch_size * k * members))
  one_step = {"image": jax.ShapeDtypeStruct((1, batch_size, 28, 28, 1), np.uint8),
              "label": jax.ShapeDtypeStruct((1, batch_size), np.int32)}  # a loop body counts once
  xla = members == 1 and xla_flops(jax.jit(functools.partial(steps.train_steps,
                                                             options=options)),
                                   jax.tree.map(lambda x: x[0], holder["state"]), one_step)
  return (_timed(call, calls, repeats, k * batch_size * members), compile_seconds,
          xla and xla / batch_size)


def measure_eval(setting: dict, config, par, images, labels, repeats: int, count: int):
  """The eval step (xla form) on one resident, masked batch."""
  import jax
  from fmnist_jax import input_pipeline, models, population, steps
  batch_size, members = setting["batch_size"], setting["members"]
  model = models.create_model(config, conv_impl="xla")
  _, state = initial(config, members, "xla")
  params = par.place_state(state.params)
  eval_fn = par.compile_eval(functools.partial(population.eval_step, apply_fn=model.apply,
                                               per_pass=setting["members_per_pass"] or 0))
  batch = input_pipeline.eval_batches(images[:batch_size], labels[:batch_size], par,
                                      batch_size)[0]
  start = time.perf_counter()
  jax.block_until_ready(eval_fn(params, batch))
  compile_seconds = time.perf_counter() - start
  _timed(lambda: eval_fn(params, batch), 10, 1, 1)  # warm-up
  xla = members == 1 and xla_flops(jax.jit(functools.partial(
      steps.eval_step, apply_fn=model.apply)), jax.tree.map(lambda x: x[0], params), batch)
  return (_timed(lambda: eval_fn(params, batch), max(1, count // (batch_size * members)),
                 repeats, batch_size * members), compile_seconds, xla and xla / batch_size)


def _settings(args, num_devices):
  """Every (dtype, parallelism, batch) group: its train settings, then its eval setting."""
  for dtype, mode, batch_size, members, per_pass in itertools.product(
      args.dtypes, args.parallelism, args.batch_sizes, args.members, args.members_per_pass):
    if members == 1 and per_pass != args.members_per_pass[0]:
      continue  # (one model has no passes)
    if batch_size % num_devices:
      print(f"skip batch {batch_size}: not divisible by {num_devices} devices")
      continue
    if members > 1 and mode != "jit":
      print(f"skip {members} members under {mode}: this benchmark times populations under jit")
      continue
    common = {"batch_size": batch_size, "dtype": dtype, "parallelism": mode,
              "devices": num_devices, "members": members,
              "members_per_pass": per_pass if members > 1 else None}
    train = [{**common, "conv_impl": conv, "input_mode": mode_in, "steps_per_call": k,
              "microbatches": m, "step": "train"}
             for conv, mode_in, k, m in itertools.product(
                 args.conv_impls, args.input_modes, args.steps_per_call, args.microbatches)
             if batch_size % (m * num_devices) == 0 and (members == 1 or mode_in == "device")]
    yield common, train + [{**common, "conv_impl": "xla", "input_mode": "device",
                            "steps_per_call": 1, "microbatches": 1, "step": "eval"}]


def main(argv=None):
  args = _parse_args(argv)
  if args.cpu_devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.cpu_devices}")
  import jax
  import numpy as np
  from benchmarks import common
  from fmnist_jax import hardware, input_pipeline, models
  from fmnist_jax.parallel import Parallelism
  from fmnist_jax.population import member_shards

  report = {**common.machine(), "config": args.config_json or args.config}
  cpu_peak = measured_cpu_peak() if report["platform"] == "cpu" else None
  base = load_config(args)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8192, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 8192).astype(np.int32)
  devices = jax.devices()
  results = []
  for common_setting, settings in _settings(args, len(devices)):
    members = common_setting["members"]
    par = Parallelism(common_setting["parallelism"], devices, member_shards=member_shards(
        [{}] * members, len(devices)) if common_setting["parallelism"] == "jit" else 1)
    config = base.copy_and_resolve_references()
    config.model.dtype = common_setting["dtype"]
    config.run.batch_size = common_setting["batch_size"]
    peak = cpu_peak or (hardware.peak_flops(report["device_kind"], config.model.dtype) or 0) \
        * len(devices)  # simulated CPU devices share one machine: its peak is the budget
    for setting in settings:
      if setting["step"] == "train":
        data = input_pipeline.DeviceTrainData(images, labels, par, config.run.batch_size,
                                              tuple(range(members)))
        k = setting["steps_per_call"]
        rows = np.arange(k * config.run.batch_size) % len(images)  # one call's steps
        host = {"image": images[rows].reshape(k, 1, config.run.batch_size, 28, 28, 1),
                "label": labels[rows].reshape(k, 1, config.run.batch_size)}
        rates, compile_s, xla = measure_train(setting, config, par, data, host, args.repeats,
                                              args.train_images)
      else:
        rates, compile_s, xla = measure_eval(setting, config, par, images, labels,
                                             args.repeats, args.eval_images)
      flops = models.flops_per_image(config, train=setting["step"] == "train")
      results.append(_entry(setting, rates, compile_s, flops, xla, peak))
      print(_line(results[-1]), flush=True)
  report.update(cpu_matmul_flops=cpu_peak, argv=sys.argv[1:] if argv is None else argv,
                results=results)
  common.write(args.json, report, to_markdown(report))
  print(f"wrote {args.json}")
  return report


def _entry(setting, rates, compile_seconds, flops_per_image, xla_flops_per_image, peak):
  median = statistics.median(rates)
  return {**setting, "images_per_second": median,
          "images_per_second_per_member": median / setting["members"], "repeats": rates,
          "compile_seconds": compile_seconds, "flops_per_image": flops_per_image,
          "xla_flops_per_image": xla_flops_per_image,
          "roofline_percent": 100 * median * flops_per_image / peak if peak else None}


def _line(r) -> str:
  roofline = f"{r['roofline_percent']:.1f}%" if r["roofline_percent"] else "n/a"
  return (f"{r['step']:5s} {r['parallelism']:4s} {r['devices']}dev x{r.get('members', 1)}m "
          f"/{r.get('members_per_pass')} "
          f"b{r['batch_size']:<5d} "
          f"{r['conv_impl']:6s} {r['dtype']:8s} {r['input_mode']:6s} x{r['steps_per_call']:<3d} "
          f"mb{r['microbatches']:<3d} {r['images_per_second']:>12,.0f} img/s  "
          f"{roofline} of peak  compile {r['compile_seconds']:.1f}s")


def _members(r) -> str:
  members, per_pass = r.get("members", 1), r.get("members_per_pass")
  if members == 1:
    return "1"
  return f"{members} ({per_pass or 'all'})"


def to_markdown(report) -> str:
  from benchmarks import common
  rows = []
  for r in report["results"]:
    roofline = f"{r['roofline_percent']:.1f}" if r["roofline_percent"] else "–"
    xla = f" ({r['xla_flops_per_image'] / 1e6:.2f})" if r["xla_flops_per_image"] else ""
    rows.append([r["step"], r["parallelism"], r["devices"], _members(r), r["batch_size"],
                 r["conv_impl"], r["dtype"], r["input_mode"], r["steps_per_call"],
                 r["microbatches"], f"{r['images_per_second']:,.0f}",
                 f"{r['flops_per_image'] / 1e6:.2f}{xla}", roofline,
                 f"{r['compile_seconds']:.1f}"])
  return "\n".join([
      f"# Throughput: {common.machine_line(report)}", "",
      f"config {report['config']}; XLA_FLAGS={report['xla_flags'] or '(none)'}; FLOPs counted "
      "from the layer shapes (XLA's own count in parentheses)", "", *common.table(
          ["step", "parallelism", "devices", "members (per pass)", "batch", "conv", "dtype",
           "input", "steps/call", "microbatches", "images/s (all members)", "MFLOP/image",
           "% of peak", "compile s"], rows)]) + "\n"


if __name__ == "__main__":
  main()
