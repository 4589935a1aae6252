"""How closely each member of a population agrees with its single run after many steps:
`python -m benchmarks.population_agreement`.

Trains the population (`--config`, default configs/dropout_study.py, with the overrides) once
and each member's single run (population.member_config: its fields, no population), all through
`python -m fmnist_jax.main`, and compares every evaluation: test/validation loss (relative) and
accuracy (in examples) of member m against single run m.

  python -m benchmarks.population_agreement --config.run.num_train_steps=300 \
      --json benchmarks/results/population_agreement_cpu_xeon.json
"""

from __future__ import annotations

import os
import pathlib
import tempfile

from benchmarks import common


def _member_flags(member: dict) -> list[str]:
  flags = ["--config.population.members=()"]
  for field, value in member.items():
    value = tuple(value) if isinstance(value, list) else value
    flags.append(f"--config.{field}={value!r}".replace(" ", ""))
  return flags


def compare_rows(member_rows: list[dict], single_rows: list[dict]) -> dict:
  """The largest differences over the evaluations both have, loss relative, accuracy absolute."""
  out = {"evaluations": len(single_rows)}
  for split in ("train", "val", "test"):
    if f"{split}_loss" not in single_rows[0]:
      continue
    pairs = list(zip(member_rows, single_rows, strict=True))
    out[f"{split}_loss_max_relative"] = max(abs(a[f"{split}_loss"] - b[f"{split}_loss"])
                                            / abs(b[f"{split}_loss"]) for a, b in pairs)
    out[f"{split}_accuracy_max_abs"] = max(abs(a[f"{split}_accuracy"] - b[f"{split}_accuracy"])
                                           for a, b in pairs)
  return out


def main(argv=None):
  parser = common.parser(__doc__, "configs/dropout_study.py")
  args, overrides = common.parse(parser, argv)
  from fmnist_jax import config_file, population
  found = population.check(config_file.load_with_overrides(args.config, overrides))
  arms = [[*common.without(overrides, ["population.members", "population.per_pass", *member]),
           *_member_flags(member)] for member in found]
  for arm in arms:  # (every single run's config, before anything trains)
    common.check_arm(parser, args.config, arm)
  report = {**common.machine(), "config": args.config, "overrides": overrides, "members": []}
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    rows = common.run(args.config, root / "population", overrides)["rows"]
    for index, (member, arm) in enumerate(zip(found, arms)):
      single = common.run(args.config, root / f"single{index}", arm)["rows"]
      mine = [r for r in rows if r["member"] == index]
      report["members"].append({"member": index, **population.plain(member),
                                **compare_rows(mine, single)})
  worst = {key: max(m[key] for m in report["members"]) for key in report["members"][0]
           if key.endswith(("_relative", "_abs"))}
  report["worst"] = worst
  common.write(args.json, report, common.machine_line(report) + "\n\n" + "\n".join(
      f"{key}: {value:.3g}" for key, value in worst.items()))
  return report


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
