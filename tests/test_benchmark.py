"""The benchmark runs end to end on a tiny setting and writes valid JSON (no timing asserted)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_throughput_benchmark_writes_valid_json(tmp_path):
  out = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.throughput", "--json", str(out), "--batch-sizes", "32",
       "--dtypes", "float32", "--cpu-devices", "2", "--steps-per-call", "1",
       "--train-images", "128", "--eval-images", "256", "--repeats", "1"],
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
  assert "| train | jit | 2 | 1 | 32 |" in result.stdout  # the markdown summary, printed
  assert report["git_commit"] and report["command"].startswith("python -m benchmarks.throughput")


@pytest.mark.slow
def test_quick_throughput_is_one_train_and_one_eval_setting(tmp_path):
  out = tmp_path / "quick.json"
  result = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--json", str(out),
                           "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  settings = [(r["step"], r["batch_size"], r["parallelism"], r["input_mode"], r["dtype"],
               r["conv_impl"], r["steps_per_call"]) for r in json.loads(out.read_text())["results"]]
  assert settings == [("train", 128, "jit", "device", "float32", "xla", 1),
                      ("eval", 128, "jit", "device", "float32", "xla", 1)]


@pytest.mark.slow
def test_matmul_dtype_benchmark_writes_every_shape_and_form(tmp_path):
  out = tmp_path / "matmul.json"
  result = subprocess.run([sys.executable, "-m", "benchmarks.matmul_dtypes", "--json", str(out),
                           "--calls", "2", "--repeats", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["platform"] == "cpu" and report["processor"]
  assert [r["matmul"] for r in report["results"]][:2] == ["conv1 forward", "conv2 forward"]
  for r in report["results"]:
    assert all(r[form] > 0 for form in
               ("float32", "bfloat16 -> float32", "bfloat16 -> bfloat16"))
  assert result.stdout.count("\n| conv") == 5


def _tiny_run_args(synthetic_tfds):
  return ["--config.run.num_train_steps=8", "--config.parallelism.steps_per_call=4",
          f"--config.data.tfds_dir={synthetic_tfds['data_dir']}"]


@pytest.mark.slow
def test_recipe_benchmark_summarizes_seeds(synthetic_tfds, tmp_path):
  out = tmp_path / "recipe.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.recipe", "--config", "configs/tiny.py", "--seeds", "0",
       "1", "--workdir-root", str(tmp_path / "runs"), "--json", str(out),
       *_tiny_run_args(synthetic_tfds)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  finals = [r["final"]["test_accuracy"] for r in report["runs"]]
  mean, std = report["summary"]["test_accuracy"]
  assert len(finals) == 2 and abs(mean - sum(finals) / 2) < 1e-12 and std >= 0
  assert report["summary"]["name"] == "tiny" and report["runs"][0]["step"] == 8
  # The last checkpoint re-evaluated from disk gives the loop's own final test accuracy.
  for run in report["runs"]:
    both = run["both_ways"]
    assert both["step"] == 8
    assert abs(both["test"]["plain"] - run["final"]["test_accuracy"]) <= 2e-3
    assert 0 <= both["test"]["flip_average"] <= 1
  assert len(report["summary"]["test_accuracy_flip_average"]) == 2
  assert "| tiny | 2 |" in result.stdout
  # Asked again with another config: refused, saying what differs (the finished runs stay).
  again = subprocess.run(
      [sys.executable, "-m", "benchmarks.recipe", "--config", "configs/tiny.py", "--seeds", "0",
       "--workdir-root", str(tmp_path / "runs"), "--json", str(tmp_path / "again.json"),
       *_tiny_run_args(synthetic_tfds)[:-2], "--config.parallelism.steps_per_call=2",
       _tiny_run_args(synthetic_tfds)[-1]],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode != 0
  assert "finished with another config" in again.stderr and "steps_per_call 4 there, 2 asked" \
      in again.stderr, again.stderr[-2000:]


@pytest.mark.slow
def test_time_to_accuracy_runs_seeds_with_a_cold_and_a_warm_cache(synthetic_tfds, tmp_path):
  out = tmp_path / "tta.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.time_to_accuracy", "--config", "configs/tiny.py",
       "--target", "0.01", "--seeds", "0", "1", "--caches", "cold", "warm", "--json", str(out),
       *_tiny_run_args(synthetic_tfds)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert [(r["cache"], r["seed"]) for r in report["runs"]] == [
      ("cold", 0), ("cold", 1), ("prime", 0), ("warm", 0), ("warm", 1)]
  for run in report["runs"]:
    assert run["reached"] and run["epochs"] > 0
    assert 0 < run["train_seconds"] < run["process_seconds_to_target"] <= run["process_seconds"]
  cold, warm = report["summary"]["cold"], report["summary"]["warm"]
  assert cold["reached"] == warm["reached"] == 2 and report["platform"] == "cpu"
  assert warm["compile_seconds"][0] < cold["compile_seconds"][0]  # the cache was used
  assert "| warm | 2/2 |" in result.stdout


@pytest.mark.slow
def test_speedrun_search_trains_variants_through_main_and_repeats_the_chosen_one(synthetic_tfds,
                                                                                tmp_path):
  out = tmp_path / "search.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.speedrun_search", "--config", "configs/speedrun.py",
       "--only", "b512_e20", "b1024_e20", "--choose", "fastest:0.0",
       "--json", str(out), "--config.model.conv_features=(4,8,8)",
       "--config.model.dense_features=16",
       "--config.run.batch_size=16", "--config.data.validation_size=40",
       *_tiny_run_args(synthetic_tfds)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert [r["name"] for r in report["results"]] == ["b512_e20", "b1024_e20"]
  fastest = min(report["results"], key=lambda r: r["train_seconds_excluding_compile"])
  assert report["chosen"] == fastest["name"]  # every variant reaches 0.0: the fastest
  for run in report["results"]:
    assert 0 < run["train_seconds_excluding_compile"] < run["process_seconds"]
    assert len(run["val_accuracy_by_epoch"]) == 1  # 8 steps: one evaluation
  assert report["git_commit"] and "benchmarks.speedrun_search" in report["command"]


def test_speedrun_search_rule_picks_the_fastest_variant_reaching_the_threshold():
  from benchmarks.speedrun_search import choose
  results = [{"name": "slow", "final_val_accuracy": 0.95, "train_seconds_excluding_compile": 9},
             {"name": "fast", "final_val_accuracy": 0.94, "train_seconds_excluding_compile": 3},
             {"name": "fastest", "final_val_accuracy": 0.90,
              "train_seconds_excluding_compile": 1}]
  assert choose(results, "fastest:0.937")["name"] == "fast"
  assert choose(results, "fastest:0.99")["name"] == "slow"  # none reaches it: the best val
  assert choose(results, "best")["name"] == "slow"


@pytest.mark.slow
@pytest.mark.parametrize("peers", [
    ["keras_tf"],
    pytest.param(["keras_tf", "torch_eager"], marks=pytest.mark.skipif(
        importlib.util.find_spec("torch") is None, reason="torch not installed (extra: peers)")),
])
def test_peer_comparison_runs_side_by_side(tmp_path, peers):
  out = tmp_path / "peers.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.peers.side_by_side", "--json", str(out), "--rounds", "1",
       "--peers", *peers, "--batch-sizes", "32", "--train-images", "640",
       "--eval-images", "640"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  rows = report["results"]
  assert {(r["step"], r["batch_size"]) for r in rows} == {("train", 32), ("eval", 32)}
  for r in rows:
    assert r["fmnist_jax"] > 0
    for peer in peers:
      assert r[peer] > 0
      assert abs(r[f"ratio_{peer}"] - r["fmnist_jax"] / r[peer]) < 1e-9
  assert ("torch" in report["versions"]) == ("torch_eager" in peers)
  assert report["processor"]  # the host CPU's model: CPU figures mean little without it
  table = result.stdout.splitlines()
  assert any(report["processor"] in line for line in table)
  assert len([line for line in table if line.startswith(("| train", "| eval"))]) == 2


def test_step_profile_charges_exclusive_time_to_the_parts_of_the_network():
  """A while loop's time is its body's operations, counted once; an operation is charged to
  the part its source names; XLA's own copies have a part of their own."""
  from benchmarks import step_profile
  hlo = "\n".join([
      '  %while.1 = (f32[]) while(%t), metadata={op_name="jit(f)/Dropout_0/jit(_uniform)/while"}',
      '  %add.2 = u32[8] add(%a, %b), metadata={op_name="jit(f)/Dropout_0/jit(_uniform)/add"}',
      '  %ynn_fusion.3 = f32[9,4] fusion(%p), metadata={op_name="jit(f)/transpose(jvp(CNN))'
      '/CNN._conv/conv2/dot_general"}',
      '  %ynn_fusion.4 = f32[9,4] fusion(%p), metadata={op_name="jit(f)/jvp(CNN)/CNN._conv'
      '/conv2/dot_general"}',
      "  %copy.5 = f32[9,4] copy(%x)"])
  sources = step_profile.op_sources(hlo)
  assert sources["copy.5"] == "(none)"
  events = [{"ph": "X", "pid": 1, "tid": 1, "name": "while.1", "ts": 0, "dur": 100},
            {"ph": "X", "pid": 1, "tid": 1, "name": "add.2", "ts": 10, "dur": 30},
            {"ph": "X", "pid": 1, "tid": 1, "name": "add.2", "ts": 50, "dur": 30},
            {"ph": "X", "pid": 1, "tid": 2, "name": "ynn_fusion.3", "ts": 0, "dur": 7},
            {"ph": "X", "pid": 1, "tid": 2, "name": "ynn_fusion.4", "ts": 7, "dur": 5},
            {"ph": "X", "pid": 1, "tid": 2, "name": "copy.5", "ts": 12, "dur": 2},
            {"ph": "X", "pid": 1, "tid": 2, "name": "ThunkExecutor::Execute", "ts": 0, "dur": 20}]
  times = step_profile.exclusive_times(events, sources)
  assert times == {"while.1": 40, "add.2": 60, "ynn_fusion.3": 7, "ynn_fusion.4": 5,
                   "copy.5": 2}
  assert {name: step_profile.part_of(sources[name]) for name in times} == {
      "while.1": "dropout: random bits and masks", "add.2": "dropout: random bits and masks",
      "ynn_fusion.3": "convolutions: gradient matmuls",
      "ynn_fusion.4": "convolutions: forward matmuls",
      "copy.5": "copies and layouts XLA added (no source op)"}


def test_step_profile_flops_by_part_add_up_to_the_step_s(tmp_path):
  from benchmarks import step_profile
  from fmnist_jax import config_file, models
  config = config_file.load(str(ROOT / "configs/default.py"))
  flops = step_profile.part_flops(config, batch_size=2)
  assert sum(flops.values()) == 2 * models.flops_per_image(config, train=True)


@pytest.mark.slow
def test_step_profile_traces_the_loop_s_train_call(tmp_path):
  out = tmp_path / "profile.json"
  subprocess.run([sys.executable, "-m", "benchmarks.step_profile", "--json", str(out),
                  "--config", "configs/tiny.py", "--batch-sizes", "16", "--calls", "1"],
                 cwd=ROOT, check=True, capture_output=True, timeout=600)
  result = json.loads(out.read_text())["results"][0]
  parts = {p["part"]: p for p in result["parts"]}
  assert result["steps_traced"] == 10 and result["images_per_second"] > 0
  # (each part and the total rounded to 3 decimals: the sum is within their rounding)
  assert sum(p["ms_per_step"] for p in parts.values()) == pytest.approx(
      result["op_ms_per_step"], abs=0.0005 * (len(parts) + 1))
  for part in ("convolutions: forward matmuls", "convolutions: gradient matmuls",
               "dropout: random bits and masks", "max-pool, bias, ReLU (forward and gradient)"):
    assert parts[part]["ms_per_step"] > 0, part


@pytest.mark.slow
def test_throughput_measures_populations_against_one_model(tmp_path):
  out = tmp_path / "population.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.throughput", "--json", str(out), "--batch-sizes", "32",
       "--dtypes", "float32", "--parallelism", "jit", "--input-modes", "device",
       "--steps-per-call", "2", "--conv-impls", "im2col", "--members", "1", "3",
       "--members-per-pass", "1", "0", "--train-images", "64", "--eval-images", "64",
       "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [(r["step"], r["members"], r["members_per_pass"])
          for r in json.loads(out.read_text())["results"]]
  assert rows == [("train", 1, None), ("eval", 1, None), ("train", 3, 1), ("eval", 3, 1),
                  ("train", 3, 0), ("eval", 3, 0)]
  for r in json.loads(out.read_text())["results"]:
    assert r["images_per_second_per_member"] * r["members"] == pytest.approx(
        r["images_per_second"])
  assert "| train | jit | 1 | 3 (all) | 32 |" in result.stdout


@pytest.mark.slow
def test_time_to_accuracy_runs_its_seeds_as_one_population(synthetic_tfds, tmp_path):
  out = tmp_path / "tta_population.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.time_to_accuracy", "--config", "configs/tiny.py",
       "--target", "0.01", "--seeds", "0", "1", "--caches", "cold", "--population",
       "--json", str(out), *_tiny_run_args(synthetic_tfds)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  (run,) = report["runs"]
  assert run["population"] and [m["seed"] for m in run["members"]] == [0, 1]
  assert all(m["reached"] and m["epochs"] > 0 for m in run["members"])
  assert report["summary"]["cold"]["reached"] == 2
  assert "| cold, one population (seconds: all seeds) | 2/2 |" in result.stdout


@pytest.mark.slow
def test_population_study_times_a_population_against_one_model(synthetic_tfds, tmp_path):
  out = tmp_path / "study.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.population_study", "--config", "configs/tiny.py",
       "--json", str(out), "--workdir", str(tmp_path / "runs"),
       "--config.population.members=(('model.dropout_rates', ((0.25, 0.4, 0.3), (0.0, 0.0, 0.0))), "
       "('run.seed', (0, 1)))", *_tiny_run_args(synthetic_tfds)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["population"]["members"] == 4 and len(report["settings"]) == 2
  assert report["ratio"] == pytest.approx(report["population"]["process_seconds"]
                                          / report["single"]["process_seconds"])
  single = json.loads((tmp_path / "runs" / "single" / "config.json").read_text())
  assert single["population"]["members"] == []  # the one model: the config without them
  assert "members in one process vs one model" in result.stdout


@pytest.mark.slow
def test_ablation_adds_each_row_s_fields_to_the_rows_above_and_measures_tta(synthetic_tfds,
                                                                            tmp_path):
  from benchmarks import ablation
  rows = dict(ablation.cumulative_rows("configs/speedrun.py"))
  assert rows["baseline"] == {}
  assert rows["dirac"] == {"model.conv1_init": "whiten", "model.dirac_init": True}
  out = tmp_path / "ablation.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.ablation", "--config", "configs/speedrun.py",
       "--seeds", "0", "1", "--epochs", "1", "--target", "0.01", "--rows", "baseline", "whiten",
       "--workdir-root", str(tmp_path / "runs"), "--json", str(out),
       "--config.run.batch_size=32", "--config.data.validation_size=200",
       "--config.model.conv_features=(20, 8, 8)",
       "--config.model.dense_features=16", *_tiny_run_args(synthetic_tfds)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert [row["name"] for row in report["rows"]] == ["baseline", "whiten"]
  for row in report["rows"]:
    assert [m["seed"] for m in row["members"]] == [0, 1]
    for member in row["members"]:
      assert len(member["val_accuracy_translated_by_epoch"]) == 1
      assert member["epochs_to_target"] == member["epochs_to_target_translated"] == 1
      assert 0 <= member["final_test_accuracy_translated"] <= 1
  config = json.loads((tmp_path / "runs" / "whiten" / "config.json").read_text())
  assert config["model"]["conv1_init"] == "whiten" and config["eval"]["tta_flip"]
  assert "| whiten (model.conv1_init=whiten) | 1.0 ± 0.0 | 2/2 |" in result.stdout


# --- the benchmarks' logic, in process on made-up inputs (the runs above: the full tier) -----

def test_mean_std_is_the_sample_std_of_the_values_given():
  from benchmarks import common
  assert common.mean_std([1.0, 2.0, 3.0]) == [2.0, 1.0]
  assert common.mean_std([None, 5.0]) == [5.0, 0.0] and common.mean_std([None]) is None
  assert common.without(["--config.run.seed=1", "--config.population.members=()", "--x=2"],
                        ("population.members",)) == ["--config.run.seed=1", "--x=2"]


def test_time_to_accuracy_summarizes_only_the_seeds_that_reached_the_target():
  from benchmarks import time_to_accuracy
  runs = [{"reached": True, "train_seconds": 2.0, "process_seconds_to_target": 10.0,
           "compile_seconds": 3.0, "epochs": 4},
          {"reached": True, "train_seconds": 4.0, "process_seconds_to_target": 12.0,
           "compile_seconds": 5.0, "epochs": 6},
          {"reached": False, "train_seconds": 9.0, "process_seconds_to_target": 99.0,
           "compile_seconds": 1.0, "epochs": 9}]
  summary = time_to_accuracy.summarize(runs)
  assert summary["runs"] == 3 and summary["reached"] == 2
  assert summary["train_seconds"] == [3.0, pytest.approx(2 ** 0.5)]
  assert summary["epochs"] == [5.0, pytest.approx(2 ** 0.5)]
  assert summary["compile_seconds"] == [3.0, 2.0]  # compilation: every run's
  report = {"time": "t", "device_kind": "cpu", "device_count": 1, "platform": "cpu",
            "processor": "made up", "cpu_count": 2, "versions": {}, "config": "c.py",
            "overrides": [], "target": 0.93, "summary": {"cold": summary}}
  assert "| cold | 2/3 | 3.00 ± 1.41 | 11.0 ± 1.4 | 3.0 ± 2.0 | 5.0 ± 1.4 |" in \
      time_to_accuracy._markdown(report)


def test_recipe_and_ablation_summaries_and_their_rows():
  from benchmarks import ablation, recipe
  results = [{"final": {"epoch": 2.0, "test_accuracy": a, "test_loss": 0.5},
              "best_by_val": {"val_accuracy": a, "test_accuracy": a},
              "training_seconds": 10.0} for a in (0.90, 0.92)]
  summary = recipe.summarize("made_up", results)
  assert summary["test_accuracy"] == [pytest.approx(0.91), pytest.approx(0.0141421356)]
  assert "\n| made_up | 2 | 2 | 91.00 ± 1.41 | 0.5000 ±" in recipe.to_markdown(summary)
  assert ablation.first_epoch([0.5, 0.93, 0.94], 0.93) == 2
  assert ablation.first_epoch([0.5], 0.93) is None
  members = [{"epochs_to_target": e, "epochs_to_target_translated": e,
              "val_accuracy_by_epoch": [0.9, v], "val_accuracy_translated_by_epoch": [0.9, v],
              "test_accuracy_by_epoch": [0.9, v], "final_test_accuracy_translated": v}
             for e, v in ((2, 0.93), (None, 0.92))]
  rows = ablation.summarize(members)
  assert rows["reached"] == 1 and rows["epochs"] == [2.0, 0.0]
  assert rows["final_val"] == [pytest.approx(0.925), pytest.approx(0.00707106781)]


@pytest.mark.parametrize("module, flag, says", [
    ("population_study", "--config.population.members=(('run.seed', ()),)",
     "must be a non-empty tuple"),
    ("population_study", "--config.population.per_pass=99", "is more than the population's"),
    ("time_to_accuracy", "--config.run.batch_size=0", "run.batch_size=0 must be a positive"),
])
def test_a_benchmark_checks_every_arm_before_anything_trains(tmp_path, module, flag, says):
  where = ["--workdir", str(tmp_path / "runs")] if module == "population_study" else []
  result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *where, "--json",
                           str(tmp_path / "out.json"), flag], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2 and says in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())
