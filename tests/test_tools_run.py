"""Every benchmark and tool module runs end to end once, on a tiny config and the synthetic data
(a module whose flags parse can still be broken: benchmarks/end_to_end.py was, unseen): here
benchmarks.end_to_end, benchmarks.population_agreement, benchmarks.startup, benchmarks.pbt and
benchmarks.distill;
the others in tests/test_benchmark.py, test_report.py, test_profiling.py and test_dataset.py."""

import json

import pytest

from conftest import tiny_config  # noqa: F401  (the fixtures' module)

pytestmark = pytest.mark.slow


def _data(synthetic_tfds) -> list[str]:
  return [f"--config.data.tfds_dir={synthetic_tfds['data_dir']}"]


def test_end_to_end_runs_main_and_its_microbenchmark(synthetic_tfds, tmp_path):
  from benchmarks import end_to_end
  report = end_to_end.main(["--config", "configs/tiny.py", "--epochs", "1", "--json",
                            str(tmp_path / "e2e.json"), *_data(synthetic_tfds)])
  assert report["end_to_end_images_per_second"] > 0 and report["ratio"] > 0
  assert json.loads((tmp_path / "e2e.json").read_text())["epochs"] == 1


def test_population_agreement_compares_each_member_with_its_single_run(synthetic_tfds,
                                                                       tmp_path):
  from benchmarks import population_agreement
  report = population_agreement.main([
      "--config", "configs/tiny.py", "--json", str(tmp_path / "agree.json"),
      "--config.population.members=(('run.seed',(0,1)),)", "--config.run.num_train_steps=3",
      *_data(synthetic_tfds)])
  assert [m["member"] for m in report["members"]] == [0, 1]
  assert report["worst"]["test_accuracy_max_abs"] <= 0.02  # (each member is its single run)


def test_startup_times_a_cold_and_a_warm_start_and_the_refusals(synthetic_tfds, tmp_path,
                                                              monkeypatch):
  from benchmarks import startup
  monkeypatch.setenv("TFDS_DATA_DIR", synthetic_tfds["data_dir"])
  startup.main(["--config", "configs/tiny.py", "--json", str(tmp_path / "startup.json"),
                "--runs", "1", "--steps", "1", "--repeats", "1"])
  report = json.loads((tmp_path / "startup.json").read_text())
  assert report["cold"]["total"] > 0 and len(report["warm"]) == 1
  assert set(report["refusals"]) >= {"rerun of a finished run", "workdir is a file"}


def test_pbt_benchmark_runs_both_arms_and_times_the_exploit(synthetic_tfds, tmp_path):
  from benchmarks import pbt
  report = pbt.main(["--config", "configs/tiny.py", "--json", str(tmp_path / "pbt.json"),
                     "--workdir-root", str(tmp_path / "runs"), "--epochs", "2", "--every", "1",
                     "--seeds", "0", *_data(synthetic_tfds)])
  arms = {arm["arm"]: arm for arm in report["arms"]}
  assert set(arms) == {"pbt_s0", "sweep_s0"} and arms["sweep_s0"]["exploits"] == 0
  assert arms["pbt_s0"]["exploits"] == 2  # (8 members: the bottom quarter, once)
  assert 0 < report["exploit_cost"]["exploit_seconds"] < report["exploit_cost"][
      "train_call_seconds"]


def test_distill_benchmark_trains_both_arms_and_times_the_teacher(synthetic_tfds, tmp_path):
  from benchmarks import common, distill
  teacher = tmp_path / "teacher"
  common.run("configs/tiny.py", teacher, ["--config.run.num_train_steps=6", *_data(synthetic_tfds)])
  report = distill.main(["--config", "configs/tiny.py", "--json", str(tmp_path / "d.json"),
                         "--workdir-root", str(tmp_path / "runs"), "--teacher", str(teacher),
                         "--seeds", "0", "1", "--config.run.num_train_steps=4",
                         *_data(synthetic_tfds)])
  arms = {arm["arm"]: arm for arm in report["arms"]}
  taught = arms["distilled_precomputed"]
  assert len(taught["test_accuracy_flip"]) == len(arms["plain"]["test_accuracy"]) == 2
  assert taught["distill"]["teacher"] == str(teacher)
  assert set(report["step_cost"]["call_seconds"]) == {"plain", "precomputed", "on_the_fly"}
