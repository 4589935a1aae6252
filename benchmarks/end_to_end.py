"""Training images/s through the real entry point vs the step microbenchmark, in one sitting.

Runs `python -m fmnist_jax.main` for a few epochs (input pipeline, compiled steps, progress
logging, per-epoch evaluation of 15,000 images and asynchronous checkpoints all included), then
benchmarks/throughput.py on that run's own resolved config.json (same model, dtype, conv form,
batch, steps per call, micro-batches and overrides), and reports the ratio.

End-to-end images/s: over the epochs after the first (which compiles), from each evaluation's
`elapsed_seconds`; with one epoch, over the whole run less its compile time (result.json).

  python -m benchmarks.end_to_end --config configs/default.py --epochs 3 \
      --json benchmarks/results/end_to_end_cpu.json [--config.run.batch_size=256 ...]
"""

from __future__ import annotations

import pathlib
import tempfile

from benchmarks import common


def _end_to_end(run: pathlib.Path) -> dict:
  from fmnist_jax import workdir
  rows = workdir.read_metrics(run, required=True)
  info, result = workdir.read_run_info(run)[0], workdir.read_result(run)
  batch_size = workdir.read_config(run).run.batch_size
  steps = result["step"] - result["resumed_from_step"]
  whole = steps * batch_size / (result["train_seconds"] - result["compile_seconds"])
  after_first = None
  if len(rows) > 1:
    seconds = rows[-1]["elapsed_seconds"] - rows[0]["elapsed_seconds"]
    after_first = (rows[-1]["step"] - rows[0]["step"]) * batch_size / seconds
  return {"end_to_end_images_per_second": after_first or whole,
          "whole_run_images_per_second_excluding_compile": whole,
          "epochs_after_first_images_per_second": after_first, "evaluations": rows,
          "result": result, "steps_per_epoch": info["steps_per_epoch"],
          "platform": info["platform"], "device_count": info["device_count"]}


def _microbenchmark(run: pathlib.Path, tmp: str) -> dict:
  """benchmarks.throughput on the run's own config: what main ran, one setting."""
  from benchmarks import throughput
  from fmnist_jax import models, steps, workdir
  config, info = workdir.read_config(run), workdir.read_run_info(run)[0]
  conv_impl = models.resolve_conv_impl(config.model.conv_impl)
  microbatches = steps.resolve_microbatches(config, info["device_count"], info["platform"])
  return throughput.main([
      "--json", f"{tmp}/micro.json", "--config-json", str(run / workdir.CONFIG_FILE),
      "--batch-sizes", str(config.run.batch_size), "--parallelism", config.parallelism.mode,
      "--input-modes", "device", "--steps-per-call", str(config.parallelism.steps_per_call),
      "--dtypes", config.model.dtype, "--conv-impls", conv_impl, "--microbatches",
      str(microbatches), "--repeats", "3"])


def main(argv=None):
  parser = common.parser(__doc__)
  parser.add_argument("--epochs", type=int, default=3)
  args, overrides = common.parse(parser, argv)
  if args.epochs < 1:
    parser.error("--epochs must be at least 1")
  machine = common.machine()  # (the code that runs: recorded before it runs)
  with tempfile.TemporaryDirectory() as tmp:
    run = pathlib.Path(tmp, "run")
    common.run_main(args.config, run, [f"--config.run.num_epochs={args.epochs}", *overrides])
    measured = _end_to_end(run)
    micro = _microbenchmark(run, tmp)
  micro_train = next(r for r in micro["results"] if r["step"] == "train")
  ratio = measured["end_to_end_images_per_second"] / micro_train["images_per_second"]
  report = {**machine, "config": args.config, "overrides": overrides,
            "epochs": args.epochs, **measured,
            "microbenchmark_images_per_second": micro_train["images_per_second"],
            "microbenchmark_setting": {k: v for k, v in micro_train.items() if k != "repeats"},
            "ratio": ratio, "cpu_count": micro["cpu_count"]}
  result = measured["result"]
  line = (f"{' '.join([args.config, *overrides])}: "
          f"{measured['end_to_end_images_per_second']:,.0f} images/s end to end (epochs "
          f"{'2-' + str(args.epochs) if args.epochs > 1 else '1, less compile'}; evaluation "
          f"and checkpoints included) vs {micro_train['images_per_second']:,.0f} in the step "
          f"microbenchmark: {100 * ratio:.0f}%. Compile {result['compile_seconds']:.1f} s "
          f"({result.get('compilations')} programs), {result.get('host_syncs_per_epoch') or 0:.1f}"
          f" host syncs per epoch. {common.machine_line(report)}")
  common.write(args.json, report, line)
  return report


if __name__ == "__main__":
  main()
