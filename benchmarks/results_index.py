"""benchmarks/results/README.md: one row per result JSON (its figure, machine, commit, date and
command), made from the JSONs themselves, so that every figure the docs quote can be traced to
the code that produced it.

  python -m benchmarks.results_index            # rewrites benchmarks/results/README.md
  python -m benchmarks.results_index --check    # exit 1 if it is not current
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from benchmarks.common import pm as _pm, table

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
INDEX = RESULTS / "README.md"



def _population_throughput(train: list[dict]) -> str:
  """Each population size's fastest train setting against one model's."""
  best = {}
  for r in train:
    if r["images_per_second"] > best.get(r.get("members", 1), {}).get("images_per_second", 0):
      best[r.get("members", 1)] = r
  one = best.get(1, {}).get("images_per_second")
  return f"train b{train[0]['batch_size']}, images/s summed over members: " + ", ".join(
      f"{n}: {r['images_per_second']:,.0f}" + (f" ({r['images_per_second'] / one:.2f}x one)"
                                               if one and n > 1 else "")
      for n, r in sorted(best.items()))


def _throughput(d: dict) -> str:
  train = [r for r in d["results"] if r.get("step") == "train"]
  if any(r.get("members", 1) > 1 for r in train):
    return _population_throughput(train)
  best = max(train or d["results"], key=lambda r: r["images_per_second"])
  return (f"{best['step']} step, batch {best['batch_size']}, {best.get('dtype', '?')}: "
          f"{best['images_per_second']:,.0f} images/s (the fastest of {len(d['results'])} "
          "settings)")


def _time_to_accuracy(d: dict) -> str:
  return "; ".join(f"{tag}: {s['reached']}/{s['runs']} seeds to {d['target']:.0%}, "
                   f"{_pm(s['train_seconds'], digits=1)} s training, "
                   f"{_pm(s['process_seconds'], digits=1)} s from process start"
                   for tag, s in d["summary"].items())


def _search(d: dict) -> str:
  text = f"chosen by `{d['rule']}`: {d['chosen'] or 'base'}"
  summary = d.get("seeds_summary", {})
  if "test_accuracy_flip_average" in summary:
    text += (f"; test {_pm(summary['test_accuracy_plain'], 100)}% single view, "
             f"{_pm(summary['test_accuracy_flip_average'], 100)}% flip-averaged")
  return text


def _ablation(d: dict) -> str:
  """The recipe ablation: each row's final flip-averaged val accuracy."""
  return (f"ablation, {len(d['seeds'])} seeds, {d['epochs']} epochs, final val (flip TTA): "
          + "; ".join(f"{row['name']} {_pm(row['summary']['final_val'], 100)}%"
                      for row in d["rows"]))


def _peers(d: dict) -> str:
  return "; ".join(f"{r['step']} b{r['batch_size']}: " + ", ".join(
      f"{r['fmnist_jax'] / r[peer]:.2f}x {peer}" for peer in d["peers"] if r.get(peer))
      for r in d["results"] if r["step"] == "train")


def figure(d: dict) -> str:
  """The headline figure of one result JSON, by what kind of result it is."""
  if "ab" in d:
    inside = d.get("in_process_population")
    return "A/B, medians new / old: " + "; ".join(
        f"{name} {s['ratio_new_old']:.2f}x" for name, s in d["ab"].items() if "train" in name) \
        + (f"; 8 members in one process: {inside['ratio_new_old']:.2f}x" if inside else "")
  if "single" in d and "population" in d:
    return (f"{d['population']['members']} members in one process: {d['ratio']:.2f}x one "
            f"model's process seconds ({d['population']['process_seconds']:,.0f} vs "
            f"{d['single']['process_seconds']:,.0f} s)")
  if "worst" in d:
    w = d["worst"]
    return (f"{len(d['members'])} members vs their single runs: test loss within "
            f"{w['test_loss_max_relative']:.1e} relative, test accuracy within "
            f"{w['test_accuracy_max_abs']:.4f}")
  if "ratio" in d:
    return (f"whole run {d['end_to_end_images_per_second']:,.0f} vs step "
            f"{d['microbenchmark_images_per_second']:,.0f} images/s: {d['ratio']:.0%}")
  if "busy_percent" in d:
    return f"device busy {d['busy_percent']}% of {d['window_ms']:,.0f} ms"
  if "exploit_cost" in d:
    s, cost = d["summary"], d["exploit_cost"]
    seeds = len(d["arms"]) // 2
    return (f"PBT vs sweep, {seeds} seed{'s' * (seeds > 1)}, {d['epochs']} epochs: best member's "
            f"test {_pm(s['pbt']['best_test_accuracy'], 100)}% vs "
            f"{_pm(s['sweep']['best_test_accuracy'], 100)}%, ensemble "
            f"{_pm(s['pbt']['ensemble_test_accuracy'], 100)}% vs "
            f"{_pm(s['sweep']['ensemble_test_accuracy'], 100)}%; an exploit "
            f"{1e3 * cost['exploit_seconds']:.1f} ms")
  if "step_cost" in d:
    arms, speed = {a["arm"]: a["summary"] for a in d["arms"]}, d["step_cost"]["images_per_second"]
    return ("students, single view (flip-averaged): " + "; ".join(
        f"{name} {_pm(s['test_accuracy'], 100)}% ({_pm(s['test_accuracy_flip'], 100)}%)"
        for name, s in arms.items()) + f"; the step with the teacher on the fly "
        f"{speed['plain'] / speed['on_the_fly']:.1f}x a plain one's, precomputed "
        f"{speed['plain'] / speed['precomputed']:.2f}x")
  if "rule" in d:
    return _search(d)
  if "rows" in d and "epochs" in d:
    return _ablation(d)
  if "target" in d:
    return _time_to_accuracy(d)
  if "summary" in d:
    s = d["summary"]
    return (f"{s['seeds']} seeds, {s['epochs']:.0f} epochs: test {_pm(s['test_accuracy'], 100)}%"
            + (f" ({_pm(s['test_accuracy_flip_average'], 100)}% flip-averaged)"
               if "test_accuracy_flip_average" in s else ""))
  if "peers" in d:
    return _peers(d)
  if "warm_median" in d:
    w = d["warm_median"]
    return (f"start-up, warm caches: {w['total']:.2f} s to the first train call (imports "
            f"{w['imports']:.2f}, compile {w['compile']:.2f}); cold {d['cold']['total']:.1f} s")
  if "calls" in d and d.get("results") and "parts" in d["results"][0]:
    return "; ".join(f"step profile b{r['batch_size']}: {r['op_ms_per_step']:.1f} ms of "
                     f"operations/step, largest: {r['parts'][0]['part']} "
                     f"({r['parts'][0]['share']:.0%})" for r in d["results"])
  if "GFLOP" in d.get("unit", ""):
    return f"{len(d['results'])} matmul shapes, GFLOP/s by operand dtype"
  return _throughput(d)


def _machine(d: dict) -> str:
  m = d.get("machine", d)
  kind = m.get("device_kind", "cpu")
  host = m.get("processor") or "?"
  where = host if kind == "cpu" else f"{kind} x{m.get('device_count', 1)}"
  return f"{where} ({m.get('cpu_count', '?')} CPUs)"


def _commit(d: dict) -> str:
  m = d.get("machine", d)
  commit = m.get("git_commit")
  if not commit:
    return "not recorded"
  return commit[:10] + (" + changes" if m.get("git_dirty") else "")


def _command(d: dict) -> str:
  m = d.get("machine", d)
  if m.get("command"):
    return m["command"]
  if "config" in d:
    return f"(not recorded; config {d['config']} {' '.join(d.get('overrides', []))})".strip()
  return "(not recorded)"


def build() -> str:
  rows = []
  for path in sorted(RESULTS.glob("*.json")):
    d = json.loads(path.read_text())
    date = d.get("time", d.get("machine", {}).get("time", "?"))[:10]
    cells = [f"`{path.name}`", figure(d), _machine(d), _commit(d), date, f"`{_command(d)}`"]
    rows.append([c.replace("|", "/") for c in cells])
  return "\n".join([
      "# Results", "",
      "One row per JSON in this folder, made by `python -m benchmarks.results_index` from the",
      "JSONs (do not edit by hand). Each JSON also holds the versions and every number.", "",
      *table(["file", "figure", "machine", "commit", "date", "command"], rows)]) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true", help="exit 1 if the index is not current")
  args = parser.parse_args(argv)
  text = build()
  if args.check:
    current = INDEX.exists() and INDEX.read_text() == text
    print(f"{INDEX} is {'current' if current else 'stale: run python -m benchmarks.results_index'}")
    sys.exit(0 if current else 1)
  INDEX.write_text(text)
  print(f"wrote {INDEX} ({text.count(chr(10)) - 7} results)")


if __name__ == "__main__":
  main()
