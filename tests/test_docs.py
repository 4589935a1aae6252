"""The docs tell the truth: every `python -m` command in README.md and docs/*.md parses with its
entry point's own parser (without running it), benchmarks/results/README.md is current with
the JSONs, and every results JSON the docs name exists."""

import argparse
import importlib
import re
import shlex

import pytest

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OURS = ("fmnist_jax.", "benchmarks.")


def _commands(text: str) -> list[str]:
  """`python -m ...` command lines: in code blocks (with `\\` continuations and `#` comments
  dropped) and in inline code spans (which may wrap across lines)."""
  commands, prose = [], []
  for i, part in enumerate(re.split(r"^```[a-z]*\n", text, flags=re.M)):
    if i % 2 == 0:  # prose
      prose.append(part)
      continue
    joined = re.sub(r"\\\n\s*", " ", part)
    for line in joined.splitlines():
      spans = [s for s in re.findall(r"`([^`]+)`", line) if "python -m " in s]
      line = re.sub(r"\s+#.*$", "", line)
      if spans:  # a command quoted in a listing's comment
        commands += spans
      elif "python -m " in line:
        commands.append(line.strip())
  for span in re.findall(r"`([^`]+)`", " ".join(" ".join(prose).split("\n"))):
    if (span.startswith("python -m ") or re.match(r"^[A-Z_]+=\S+ python -m ", span)) and \
        len(span.split()) > 3:  # (not a mention of a module alone)
      commands.append(span)
  return commands


def _documented():
  found = []
  for path in DOCS:
    for command in _commands(path.read_text()):
      words = shlex.split(command)
      while "-m" not in words:  # a command quoted inside another (ssh, srun, ...)
        inner = next((w for w in words if "python -m " in w), None)
        assert inner is not None, f"{path.name}: cannot read {command!r}"
        words = shlex.split(inner.split("&&")[-1])
      words = words[words.index("-m"):]  # (an environment prefix dropped)
      if words[1].startswith(OURS):
        found.append(pytest.param(words[1], words[2:], id=f"{path.name}: {command[:70]}"))
  return found


class _Parsed(Exception):
  pass


def _parse_with_argparse(module, argv, monkeypatch):
  """Runs the module's main(argv) up to its argparse parse, which must succeed; stops there.
  Returns (namespace, unparsed extra arguments)."""
  real_known = argparse.ArgumentParser.parse_known_args
  real_full = argparse.ArgumentParser.parse_args
  inside_full = []

  def known(self, args=None, namespace=None):
    result = real_known(self, args, namespace)
    if not inside_full:
      raise _Parsed(result)
    return result

  def full(self, args=None, namespace=None):
    inside_full.append(True)
    try:
      result = real_full(self, args, namespace)
    finally:
      inside_full.pop()
    raise _Parsed((result, []))

  monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", known)
  monkeypatch.setattr(argparse.ArgumentParser, "parse_args", full)
  with pytest.raises(_Parsed) as parsed:
    module.main(argv)
  return parsed.value.args[0]


@pytest.mark.parametrize("module_name,argv", _documented())
def test_every_documented_command_parses(module_name, argv, monkeypatch):
  monkeypatch.chdir(ROOT)
  if module_name == "fmnist_jax.main":
    from absl import flags
    from fmnist_jax import main
    assert main.check_command_line(argv) is None, main.check_command_line(argv)
    values = flags.FlagValues()
    main.define_flags(values, sys_argv=["fmnist_jax.main", *argv])
    values(["fmnist_jax.main", *argv])
    return
  module = importlib.import_module(module_name)
  namespace, extra = _parse_with_argparse(module, argv, monkeypatch)
  if extra:  # a benchmark's --config.FIELD=VALUE: the parser main uses
    from fmnist_jax import config_file
    assert all(arg.startswith("--config.") for arg in extra), extra
    config_file.load_with_overrides(namespace.config, extra)


def test_the_docs_hold_commands_of_every_kind():
  modules = {param.values[0] for param in _documented()}
  assert {"fmnist_jax.main", "fmnist_jax.report", "fmnist_jax.compare",
          "benchmarks.throughput", "benchmarks.end_to_end", "benchmarks.time_to_accuracy",
          "benchmarks.recipe", "benchmarks.speedrun_search"} <= modules, modules


def test_the_results_index_is_current_and_every_cited_json_exists():
  from benchmarks import results_index
  assert results_index.INDEX.read_text() == results_index.build(), \
      "benchmarks/results/README.md is stale: run python -m benchmarks.results_index"
  present = {p.name for p in results_index.RESULTS.glob("*.json")}
  for path in DOCS:
    for name in re.findall(r"\b([a-z0-9_]+\.json)\b", path.read_text()):
      if name[0].isalpha() and re.match(r"(end_to_end|throughput|time_to_accuracy|recipe|peers|"
                                        r"speedrun_search|best_accuracy|trace_gaps|cpu_|ablation|"
                                        r"matmul)", name) and "<" not in name:
        assert name in present, f"{path.name} cites {name}, which is not in benchmarks/results/"


def test_every_test_the_docs_name_exists():
  """docs/faults.md promises a test per row: each named test (or test file) is there."""
  defined = set()
  for path in (ROOT / "tests").glob("test_*.py"):
    defined.add(path.stem)
    defined.update(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
  for path in DOCS:
    for name in re.findall(r"`(test_\w+)", path.read_text()):
      assert name in defined, f"{path.name} names {name}, which no test file defines"


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_points_at_a_file_and_heading_that_exist():
  for path in DOCS:
    for target, anchor in re.findall(r"\]\(([^)#\s]+\.md)(?:#([^)]+))?\)", path.read_text()):
      linked = (path.parent / target).resolve()
      assert linked.exists(), f"{path.name} links to {target}, which does not exist"
      if anchor:
        headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
        assert anchor in {_slug(h) for h in headings}, f"{path.name}: no #{anchor} in {target}"
