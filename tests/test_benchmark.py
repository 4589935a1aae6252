"""The benchmark runs end to end on a tiny setting and writes valid JSON (no timing asserted)."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_throughput_benchmark_writes_valid_json(tmp_path):
  out = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.throughput", "--json", str(out), "--quick",
       "--batch-sizes", "32", "--dtypes", "float32", "--cpu-devices", "2"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "XLA_FLAGS": ""})
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["platform"] == "cpu" and report["device_count"] == 2
  assert {"jax", "flax", "optax"} <= set(report["versions"])
  steps = {(r["step"], r["parallelism"], r["input_mode"]) for r in report["results"]}
  assert {("train", "jit", "device"), ("train", "pmap", "host"), ("eval", "jit", "device"),
          ("eval", "pmap", "device")} <= steps
  for r in report["results"]:
    assert {"step", "batch_size", "dtype", "parallelism", "input_mode", "devices",
            "images_per_second"} <= set(r)
    assert r["images_per_second"] > 0 and r["devices"] == 2 and r["batch_size"] == 32
    assert 0 < r["roofline_percent"] < 100
    assert r["flops_per_image"] > 1e6  # the seed CNN: ~6.5 MFLOP forward per image
  assert {r["conv_impl"] for r in report["results"] if r["step"] == "train"} == {"xla", "im2col"}
  assert "| train | jit | 2 | 32 |" in out.with_suffix(".md").read_text()
