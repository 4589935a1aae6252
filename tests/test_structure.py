"""The package's shape, read from its source (ast): no import cycles, pure steps apart from the
loop, and what a machine without TensorFlow needs really runs there."""

import ast
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "fmnist_jax"
PURE = ("steps", "models", "state", "augment", "errors")  # the compiled-step side
NOT_FROM_PURE = ("train", "report", "evaluate", "checkpointing", "workdir", "main", "progress",
                 "preemption", "tensorflow", "tensorflow_datasets", "orbax")


def _imports(path) -> set[str]:
  """Every module `path` imports, at any depth (lazy imports in functions count too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      if node.module == "fmnist_jax":
        found.update(f"fmnist_jax.{alias.name}" for alias in node.names)
  return found


def _graph() -> dict[str, set[str]]:
  return {path.stem: _imports(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def _internal(imports: set[str]) -> set[str]:
  return {name.split(".")[1] for name in imports if name.startswith("fmnist_jax.")}


def test_the_package_has_no_import_cycle():
  graph = {module: _internal(imports) for module, imports in _graph().items()}
  state = {}  # module -> "visiting" | "done"

  def visit(module, path):
    if state.get(module) == "visiting":
      pytest.fail("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
    if state.get(module) == "done":
      return
    state[module] = "visiting"
    for target in sorted(graph.get(module, ())):
      visit(target, path + [module])
    state[module] = "done"
  for module in sorted(graph):
    visit(module, [])


def test_steps_models_and_state_import_neither_the_loop_nor_io_libraries():
  graph = _graph()

  def reachable(module, seen=None):
    seen = set() if seen is None else seen
    for name in graph[module]:
      top = name.split(".")[0]
      key = name.split(".")[1] if top == "fmnist_jax" and "." in name else top
      if key not in seen:
        seen.add(key)
        if top == "fmnist_jax" and key in graph:
          reachable(key, seen)
    return seen
  for module in PURE:
    bad = reachable(module) & set(NOT_FROM_PURE)
    assert not bad, f"fmnist_jax.{module} imports {sorted(bad)} (directly or through others)"
  assert not _internal(graph["errors"]), "errors.py must import nothing of the package"


def test_the_package_reads_in_an_afternoon():
  """The loop in train.py stays short; no class over 200 lines, no function over 60."""
  # (a bound with room: the loop with its setup, restore and finish; the loop itself, `Loop`,
  # is held to a class's 200 lines below)
  assert len((PACKAGE / "train.py").read_text().splitlines()) <= 400
  too_long = []
  for path in sorted(PACKAGE.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        limit = 200 if isinstance(node, ast.ClassDef) else 60
        if node.end_lineno - node.lineno + 1 > limit:
          too_long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
  assert not too_long, too_long


# A driver that makes `import tensorflow` fail, as on the standard CUDA / TPU JAX images.
NO_TF = """
import json, runpy, sys
for name in ("tensorflow", "tensorflow_datasets"):
  sys.modules[name] = None
from fmnist_jax import dataset
dataset.IDX_SHA256.update(json.loads(sys.argv[1]))  # the synthetic IDX files' checksums
module, sys.argv = sys.argv[2], [sys.argv[2]] + sys.argv[3:]
try:
  runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as e:
  code = e.code
else:
  code = 0
print("LOADED", json.dumps(sorted(m for m in ("tensorflow", "tensorflow_datasets")
                                  if sys.modules.get(m) is not None)))
sys.exit(code)
"""


def _without_tensorflow(synthetic_tfds, *args):
  return subprocess.run(
      [sys.executable, "-c", NO_TF, json.dumps(synthetic_tfds["checksums"]), *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "FMNIST_IDX_DIR": str(synthetic_tfds["idx_dir"])})


# Outside population.py and pbt.py (the members, and their population-based training), the only
# places that ask whether a run has one member or several, and why. The count is the conditions
# (if, conditional expressions, while, and comprehension filters) whose test mentions a member,
# a population or a state's hparams being None: at most 6 in all, none in a module not listed.
MEMBER_QUESTIONS = ("compare",   # a workdir of several members compares as one run per member
                    "report",    # several members add their tables; the headline says a mean
                    "workdir")   # a resume that changes the population is refused (not a count)


def _member_questions(source: str) -> int:
  count = 0
  for node in ast.walk(ast.parse(source)):
    tests = node.ifs if isinstance(node, ast.comprehension) else \
        [node.test] if isinstance(node, (ast.If, ast.IfExp, ast.While)) else []
    count += sum(any(word in ast.get_source_segment(source, test).lower()
                     for word in ("member", "population", "hparams is")) for test in tests)
  return count


def test_one_training_path_asks_about_members_only_where_it_says():
  asked = {path.stem: _member_questions(path.read_text()) for path in PACKAGE.glob("*.py")
           if path.stem not in ("population", "pbt")}
  assert sum(asked.values()) <= 6, asked
  assert not {module for module, count in asked.items()
              if count and module not in MEMBER_QUESTIONS}, asked
  # The counter sees a question it should (so the bound above can fail):
  assert _member_questions("if len(members) > 1:\n  pass\nx = [m for m in y if m.member]") == 2


@pytest.mark.slow
def test_training_and_the_report_run_without_tensorflow(synthetic_tfds, tmp_path):
  result = _without_tensorflow(
      synthetic_tfds, "fmnist_jax.main", "--config", "configs/tiny.py",
      "--workdir", str(tmp_path), "--config.data.tfds_dir=/nonexistent",
      "--config.run.num_train_steps=6",
      "--config.logging.write_report=True")
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'LOADED []' in result.stdout  # TensorFlow was not imported
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 6 and rows[-1]["test_count"] == synthetic_tfds["test_count"]
  assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
  assert (tmp_path / "report" / "report.md").exists()
  # Streaming through tf.data is the one thing that needs TensorFlow: one line says so.
  streaming = _without_tensorflow(synthetic_tfds, "fmnist_jax.main", "--config",
                                  "configs/tiny.py", "--workdir", str(tmp_path / "tfds"),
                                  "--config.data.input_mode=tfds")
  assert streaming.returncode != 0 and "pip install tensorflow-cpu" in streaming.stderr
  assert "Traceback" not in streaming.stderr and not (tmp_path / "tfds").exists()


@pytest.mark.slow
def test_throughput_benchmark_runs_without_tensorflow(synthetic_tfds, tmp_path):
  out = tmp_path / "bench.json"
  result = _without_tensorflow(synthetic_tfds, "benchmarks.throughput", "--json", str(out),
                               "--quick", "--batch-sizes", "16", "--dtypes", "float32",
                               "--parallelism", "jit", "--input-modes", "device",
                               "--conv-impls", "xla")
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'LOADED []' in result.stdout
  steps = {r["step"] for r in json.loads(out.read_text())["results"]}
  assert steps == {"train", "eval"}
