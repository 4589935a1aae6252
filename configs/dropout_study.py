"""The seed tutorial's study, with vs without dropout, over 5 seeds: 10 models trained as one
population in one compiled program (fmnist_jax/population.py).

  python -m fmnist_jax.main --config configs/dropout_study.py --workdir /tmp/dropout_study

Members 0-4: the seed recipe with dropout (0.25, 0.4, 0.3), seeds 0-4; members 5-9: no
dropout, the same seeds (so the same initial parameters and batch order as members 0-4).
The report (WORKDIR/report/) gives each setting's mean +- std.
"""

from configs import default

SEEDS = (0, 1, 2, 3, 4)


def get_config():
  config = default.get_config()
  config.population.members = (("model.dropout_rates", ((0.25, 0.4, 0.3), (0.0, 0.0, 0.0))),
                               ("run.seed", SEEDS))
  return config
