"""Populations: many models in one compiled program, each member its own single run."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from fmnist_jax import checkpointing, population, train
from fmnist_jax.errors import ConfigError
from fmnist_jax.parallel import Parallelism


def _rows(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def test_members_are_the_product_of_the_values_in_the_order_written():
  config = tiny_config(population=(("dropout_rates", ((0.25, 0.4, 0.3), (0.0, 0.0, 0.0))),
                                   ("seed", (0, 1, 2))))
  found = population.check(config)
  assert [(m["dropout_rates"][0], m["seed"]) for m in found] == [
      (0.25, 0), (0.25, 1), (0.25, 2), (0.0, 0), (0.0, 1), (0.0, 2)]
  single = population.member_config(config, found[4])
  assert single.seed == 1 and tuple(single.dropout_rates) == (0.0, 0.0, 0.0)
  assert single.population == () and population.check(tiny_config()) == []


@pytest.mark.parametrize("value, says", [
    ((("batch_size", (16, 32)),), "changes the program or its shapes"),
    ((("sead", (0, 1)),), "is not a config field"),
    ((("seed", ()),), "must be a non-empty tuple"),
    ((("learning_rate", ("fast",)),), "is not a float"),
    ((("dropout_rates", ((0.1, 0.2),)),), "is not a tuple"),
    ((("learning_rate", (1e-3, -1.0)),), "member 1 (learning_rate=-1.0)"),
    ((("seed", (0,)), ("seed", (1,))), "named twice"),
    ((("seed", (2 ** 40,)),), "[0, 2**31)"),
    (("seed",), "must be (field, values) pairs"),
])
def test_a_bad_population_is_one_line_before_any_data_is_read(tmp_path, value, says):
  with pytest.raises(ConfigError) as raised:
    train.setup(tiny_config(population=value), str(tmp_path / "run"))
  assert says in str(raised.value) and "\n" not in str(raised.value)
  assert not (tmp_path / "run").exists()


def test_pmap_cannot_hold_a_population(tmp_path):
  config = tiny_config(parallelism="pmap", population=(("seed", (0, 1)),))
  with pytest.raises(ConfigError, match="parallelism='jit'"):
    train.setup(config, str(tmp_path / "run"))


# Each pair of fields, 2 values each: 4 members against 4 single runs of `main`'s loop.
SWEEPS = {
    "dropout_study": ({}, (("dropout_rates", ((0.25, 0.4, 0.3), (0.0, 0.0, 0.0))),
                           ("seed", (0, 1)))),
    "lr_smoothing_schedule": ({"schedule": "warmup_cosine", "warmup_epochs": 0.1},
                              (("learning_rate", (1e-3, 3e-3)),
                               ("label_smoothing", (0.0, 0.1)))),
    "ema_translate": ({}, (("ema_decay", (0.0, 0.9)), ("augment_translate", (0, 2)))),
    "adamw_flip_erase": ({"optimizer": "adamw", "augment_erase_size": 6},
                         (("weight_decay", (0.0, 0.05)), ("augment_flip", (False, True)),
                          ("augment_erase_prob", (0.0, 0.5)))),
}


@pytest.mark.parametrize("name", list(SWEEPS))
def test_every_member_is_its_single_run(small_splits, tmp_path, name):
  """After a few steps each member's evaluation equals `main` run alone with its fields."""
  base, pairs = SWEEPS[name]
  config = tiny_config(num_train_steps=3, steps_per_call=2, **base, population=pairs)
  train.train_and_evaluate(config, str(tmp_path / "population"))
  rows = {row["member"]: row for row in _rows(tmp_path / "population")}
  for index, member in enumerate(population.members(config)):
    single = population.member_config(config, member)
    alone = train.train_and_evaluate(single, str(tmp_path / f"single{index}"))
    for key in ("test_loss", "val_loss", "train_loss"):
      np.testing.assert_allclose(rows[index][key], alone[key], rtol=1e-5, err_msg=key)
    assert rows[index]["test_accuracy"] == alone["test_accuracy"]
