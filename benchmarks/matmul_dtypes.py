"""GFLOP/s of the seed CNN's own training matmuls, by operand and result dtype, on this device.

Whether a bfloat16 mode can pay off depends on the hardware's matrix units: some CPUs (Intel
AMX, AVX512-BF16) multiply bfloat16 operands into float32 much faster than float32 ones, while
bfloat16 *results* may take a slow path. For each matmul of the im2col training step at 32
images per micro-batch (forward, weight gradient, input gradient, dense layers) this times
float32, bfloat16 -> float32 (`preferred_element_type`), and bfloat16 -> bfloat16.

  python -m benchmarks.matmul_dtypes --json benchmarks/results/matmul_dtypes_cpu.json
"""

from __future__ import annotations

import argparse
import time

from benchmarks import common

# (name, (M, K), N) for 32 images per micro-batch: patches (positions, 9*Cin) x kernel (9*Cin, F).
SHAPES = (
    ("conv1 forward", (32 * 26 * 26, 9), 32),
    ("conv2 forward", (32 * 11 * 11, 288), 64),
    ("conv2 weight gradient", (288, 32 * 11 * 11), 64),
    ("conv2 input gradient", (32 * 11 * 11, 64), 288),
    ("conv3 forward", (32 * 3 * 3, 576), 128),
    ("dense1 forward", (32, 1152), 128),
)
FORMS = (("float32", "float32", "float32"), ("bfloat16 -> float32", "bfloat16", "float32"),
         ("bfloat16 -> bfloat16", "bfloat16", "bfloat16"))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", required=True)
  parser.add_argument("--calls", type=int, default=200, help="timed calls per matmul and form")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  if args.calls < 1 or args.repeats < 1:
    parser.error("--calls and --repeats must be at least 1")
  common.checked_json(parser, args.json)
  import jax
  import jax.numpy as jnp
  machine = common.machine()  # (the code that runs: recorded before it runs)

  rows = []
  for name, (m, k), n in SHAPES:
    row = {"matmul": name, "m": m, "k": k, "n": n}
    for form, operands, result in FORMS:
      a, b = jnp.ones((m, k), operands), jnp.ones((k, n), operands)
      matmul = jax.jit(lambda a, b, result=result: jnp.matmul(
          a, b, preferred_element_type=jnp.dtype(result)))
      matmul(a, b).block_until_ready()
      rates = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.calls):
          out = matmul(a, b)
        out.block_until_ready()
        rates.append(2 * m * k * n * args.calls / (time.perf_counter() - start) / 1e9)
      row[form] = sorted(rates)[len(rates) // 2]
    rows.append(row)
    print(f"{name:24s} " + "  ".join(f"{form} {row[form]:7.1f}" for form, _, _ in FORMS),
          flush=True)
  report = {"unit": "GFLOP/s, median of repeats", **machine, "results": rows}
  lines = [f"{common.machine_line(report)}; GFLOP/s", "",
           "| matmul | M x K x N | " + " | ".join(f for f, _, _ in FORMS) + " |",
           "|" + " --- |" * (2 + len(FORMS))]
  lines += [f"| {r['matmul']} | {r['m']} x {r['k']} x {r['n']} | " +
            " | ".join(f"{r[f]:,.0f}" for f, _, _ in FORMS) + " |" for r in rows]
  common.write(args.json, report, "\n".join(lines))


if __name__ == "__main__":
  main()
