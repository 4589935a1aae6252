"""The profile_steps trace: its window, a real trace of a run, and the gap summary's numbers."""

import gzip
import json

import jax
import pytest

from fmnist_jax import trace_gaps
from conftest import tiny_config
from fmnist_jax import profiling, train


@pytest.mark.parametrize("window,calls,started,stopped", [
    ((10, 30), [5, 15, 25, 35], 15, 35),   # starts after the call reaching 10, stops at 30
    ((10, 30), [40, 50], None, None),      # a resumed run past the window traces nothing
    ((12, 14), [10, 20], None, None),      # a window inside one call: nothing
    ((0, 0), [10, 20], None, None),        # off
    ((0, 30), [10, 20], 10, None),         # a run that ends first: the loop's stop() writes it
])
def test_the_trace_window_follows_the_calls(monkeypatch, tmp_path, window, calls, started,
                                            stopped):
  seen = {}
  monkeypatch.setattr(jax.profiler, "start_trace", lambda *a, **k: seen.setdefault("start", s))
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: seen.setdefault("stop", s))
  profiler = profiling.StepProfiler(tmp_path, window)
  for s in calls:
    profiler.after_call(s)
  assert (seen.get("start"), seen.get("stop")) == (started, stopped)
  s = "loop's stop"
  profiler.stop()
  assert ("stop" in seen) == (started is not None)


def test_a_profiled_run_writes_a_trace_of_the_loops_phases(small_splits, tmp_path):
  config = tiny_config(run=dict(num_epochs=1), parallelism=dict(steps_per_call=2),
                       logging=dict(profile_steps=(4, 10)))
  train.train_and_evaluate(config, str(tmp_path))
  traces = list(tmp_path.glob("plugins/profile/*/perfetto_trace.json.gz"))
  assert len(traces) == 1 and trace_gaps.find_trace(tmp_path) == traces[0]
  device, host, kind = trace_gaps.load_lanes(traces[0])
  assert kind == "CPU (XLA's threads)" and device
  names = {name for _, _, name in trace_gaps.outermost(host)}
  assert {"train calls", "checkpoints"} <= names  # the loop's phases, named in the trace
  trace_gaps.main([str(tmp_path), "--json", str(tmp_path / "gaps.json")])  # (the tool, whole)
  summary = json.loads((tmp_path / "gaps.json").read_text())
  assert summary["window_ms"] > 0 and 0 < summary["busy_percent"] <= 100
  assert sum(summary["idle_ms_by_host_work"].values()) == pytest.approx(
      summary["idle_ms"], abs=0.01)
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["host_seconds"]["profiler"] > 0


def test_trace_gaps_counts_a_gpu_traces_idle_time_and_names_the_host_work(tmp_path):
  """A GPU-like trace (device lanes as /device:* processes), whose answer is known."""
  def span(pid, tid, ts, dur, name):
    return {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}
  events = [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "python"}},
      span(2, 1, 0, 10, "fusion"), span(2, 2, 2, 3, "nested on another stream"),
      span(2, 1, 12, 8, "conv"), span(2, 1, 20, 10, "conv"), span(2, 1, 35, 5, "reduce"),
      span(1, 7, 9, 4, "evaluation"), span(1, 7, 10, 1, "PjitFunction(eval_step)"),
      span(1, 7, 30, 3, "train calls"), span(1, 7, 30, 1, "PjitFunction(train_call)"),
      span(1, 8, 0, 40, "another thread's work"),
  ]
  path = tmp_path / "perfetto_trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  summary = trace_gaps.summarize(path)
  assert summary["device"] == "/device:GPU:0" and summary["window_ms"] == 0.04
  assert summary["gaps"] == 2 and summary["idle_ms"] == 0.007
  assert summary["busy_percent"] == 82.5
  assert summary["idle_ms_by_host_work"] == {"train calls": 0.003, "evaluation": 0.002,
                                             trace_gaps.UNTRACED: 0.002}
  assert summary["longest_gaps"][0] == {"at_ms": 0.03, "ms": 0.005, "host": "train calls"}


@pytest.mark.parametrize("content", [b"", b"\x1f\x8b\x08 cut short", b"{\"no events\": 1}"])
def test_trace_gaps_refuses_a_damaged_trace_in_one_line(tmp_path, content):
  path = tmp_path / "perfetto_trace.json.gz"
  path.write_bytes(content)
  with pytest.raises(SystemExit, match="is not a readable trace .*: give a workdir"):
    trace_gaps.summarize(path)
