"""The test tiers stay honest: a test that starts a process is in the slow tier (make test-all)
unless it is named in DEFAULT_TIER_PROCESSES with why it is quick; the markers are declared."""

import ast
import tomllib

from conftest import ROOT

TESTS = ROOT / "tests"
# Default-tier tests that start a process, each quick because the process stops before jax is
# imported or compiles nothing; module::test.
DEFAULT_TIER_PROCESSES = {
    "test_main::test_command_line_rejects_bad_config_before_touching_the_workdir":
        "refused before jax is imported",
    "test_main::test_command_line_rejects_a_workdir_that_is_a_file": "refused before jax",
    "test_main::test_command_line_mistakes_are_refused_before_jax_is_imported": "no jax",
    "test_main::test_command_line_reports_a_missing_config_file": "refused before jax",
    "test_faults::test_config_file_with_a_syntax_error_gets_one_paragraph": "refused before jax",
    "test_faults::test_user_mistakes_get_one_line_and_no_workdir": "refused before jax",
    "test_faults::test_config_files_without_a_config_dict_get_one_paragraph": "refused early",
    "test_faults::test_a_config_field_given_without_its_prefix_is_named_with_it": "refused early",
    "test_faults::test_a_flagfile_is_checked_as_the_command_line": "refused before jax",
    "test_faults::test_a_cut_short_writers_coroutine_does_not_print_after_the_error_line":
        "a few lines of asyncio, no jax",
    "test_faults::test_tools_refuse_bad_arguments_in_one_line_before_they_work":
        "argument checks before any work",
    "test_data_cache::test_a_start_from_the_cache_imports_no_tensorflow": "loads .npy files",
    "test_faults::test_a_sigterm_during_a_call_longer_than_its_grace_exits_in_one_line":
        "imports the preemption module (jax; nothing compiled), out after a 0.5 s grace",
    "test_benchmark::test_a_benchmark_checks_every_arm_before_anything_trains":
        "the config checks only; nothing compiles",
}


def _marked_slow(function: ast.FunctionDef) -> bool:
  """A `slow` mark on the test, or on some of its parameters (the others are then default)."""
  return any("slow" in ast.unparse(decorator) for decorator in function.decorator_list)


def _process_starters(tree: ast.Module) -> set[str]:
  """The module's functions that start a process, directly or through its other functions."""
  functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
  calls = {name: {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
           | {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
           for name, node in functions.items()}
  starters = {name for name, used in calls.items() if "subprocess" in used}
  while True:
    more = {name for name, used in calls.items() if used & starters} - starters
    if not more:
      return starters
    starters |= more


def _tests_starting_processes() -> dict[str, ast.FunctionDef]:
  found = {}
  for path in sorted(TESTS.glob("test_*.py")):
    tree = ast.parse(path.read_text())
    starters = _process_starters(tree)
    for node in tree.body:
      # (a fixture argument that starts processes counts: its name is a parameter)
      arguments = {a.arg for a in node.args.args} if isinstance(node, ast.FunctionDef) else set()
      if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and (
          node.name in starters or arguments & starters):
        found[f"{path.stem}::{node.name}"] = node
  return found


def test_a_test_that_starts_a_process_is_slow_or_named_as_quick():
  found = _tests_starting_processes()
  unmarked = {name for name, node in found.items() if not _marked_slow(node)}
  assert unmarked - set(DEFAULT_TIER_PROCESSES) == set(), (
      "these tests start processes: mark them @pytest.mark.slow (make test-all), or name them "
      "in DEFAULT_TIER_PROCESSES with why they are quick")
  assert set(DEFAULT_TIER_PROCESSES) <= unmarked  # no stale names in the list
  assert len(found) > 30  # the scan sees the suite's process tests


def test_the_markers_are_declared_and_strict():
  options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
  assert "--strict-markers" in options["addopts"]
  assert {line.split(":")[0] for line in options["markers"]} == {"slow", "realdata"}
  makefile = (ROOT / "Makefile").read_text()
  assert '-m "not slow"' in makefile and "test-all:" in makefile
  assert "make test-all" in (ROOT / ".ci" / "run").read_text()
