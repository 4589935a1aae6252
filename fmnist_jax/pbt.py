"""Population-based training (Jaderberg et al., 2017) inside the run's programs.

After every `pbt.every_epochs`-th epoch's evaluation has scored each member (its validation
accuracy, in its state), the next epoch begins with an exploit and an explore on the device: the
bottom `pbt.fraction` of the members each take the whole state of a member of the top fraction
(parameters, optimizer state and moments, EMA, lookahead's slow weights, hparams: a gather on
the member axis), then change the values they explore: each multiplied by one of `pbt.factors`,
or, with `pbt.resample_probability`, drawn afresh from the population's first values; each kept
in its valid range and within what the program was compiled for. A copy keeps its own dropout
key and its own seed's data order. Every draw comes from config.run.seed and the step, and the
scores are in the checkpoints: the same run makes the same exploits, also when resumed.

PBT explores the fields the population varies but the seed and the flip mode (a mode, not a
number). `pbt.replay` ("WORKDIR:MEMBER") trains a single run from scratch with a finished PBT
member's schedule (Ray Tune's PopulationBasedTrainingReplay): the values it trained each epoch
with, written at each epoch's start; whether the schedule or the inherited weights made the
member good.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import config_file, steps, workdir as workdir_lib
from fmnist_jax.errors import ConfigError, ReportError

# The fields PBT explores and their valid ranges (None: the population's largest value, what
# the program was compiled for).
RANGES = {"optimizer.learning_rate": (0.0, math.inf), "optimizer.weight_decay": (0.0, math.inf),
          "optimizer.label_smoothing": (0.0, 0.99), "optimizer.ema_decay": (0.0, 0.9999),
          "model.dropout_rates": (0.0, 0.95), "augment.translate": (0, None),
          "augment.erase_size": (0, None), "augment.erase_prob": (0.0, 1.0)}
IN_OPTIMIZER = ("optimizer.learning_rate", "optimizer.weight_decay")
_STEP_KEYS = {path: key for key, path in steps.STEP_FIELDS.items()}


def explored(paths) -> list[str]:
  """The paths PBT explores of those a population varies (e.g. a member's keys)."""
  return [path for path in paths if path in RANGES]


def check(config, found: list[dict]) -> list[str]:
  """ConfigError for PBT settings that cannot work, before any data is read; the warnings of
  settings that do nothing."""
  pbt = config.pbt
  if not isinstance(pbt.every_epochs, int) or pbt.every_epochs < 0:
    raise ConfigError(f"pbt.every_epochs={pbt.every_epochs!r} must be an integer >= 0 (0: off).")
  if not pbt.every_epochs:
    return []
  problems = []
  if not 0 < pbt.fraction <= 0.5:
    problems.append(f"pbt.fraction={pbt.fraction!r} must be in (0, 0.5]: the bottom fraction "
                    "copies from the top fraction.")
  factors = tuple(pbt.factors)
  if not factors or not all(isinstance(f, (int, float)) and 0 < f < math.inf for f in factors):
    problems.append(f"pbt.factors={factors!r} must be positive, finite numbers, e.g. (0.8, 1.25).")
  if not 0 <= pbt.resample_probability <= 1:
    problems.append(f"pbt.resample_probability={pbt.resample_probability!r} must be in [0, 1].")
  if not config.data.validation_size:
    problems.append("pbt ranks members on the validation split: set data.validation_size > 0 "
                    "(the test split is never used to choose).")
  if config.data.input_mode == "tfds":
    problems.append("pbt needs data.input_mode=device (the exploit runs between compiled "
                    "calls on device-resident data).")
  if not explored(found[0]):
    problems.append("pbt has nothing to explore: the population varies "
                    f"{', '.join(found[0]) or 'nothing'}; vary one of {', '.join(RANGES)}.")
  elif 0 < pbt.fraction <= 0.5 and int(len(found) * pbt.fraction) < 1:
    problems.append(f"pbt.fraction={pbt.fraction:g} of {len(found)} members names no member "
                    f"to replace: use at least {math.ceil(1 / pbt.fraction)} members or a "
                    "larger fraction.")
  if problems:
    raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))
  epochs = config.run.num_epochs if config.run.num_train_steps <= 0 else None
  if epochs is not None and pbt.every_epochs >= epochs:
    return [f"pbt.every_epochs={pbt.every_epochs} is not below the run's {epochs} epochs: no "
            "member is ever replaced (a sweep)."]
  return []


def columns(config, count: int) -> dict:
  """The hparams PBT adds to a new state: each member's score (its last validation accuracy),
  the member it copied at its last exploit (-1: none) and that step."""
  if not (config.pbt.every_epochs or config.pbt.replay):
    return {}
  return {"score": np.zeros(count, np.float32), "parent": np.full(count, -1, np.int32),
          "parent_step": np.zeros(count, np.int32)}


def scorer(config, eval_sets: dict):
  """state, evaluation -> state with each member's validation accuracy as its score (a
  diverged member's: -1, so it is replaced first). None without PBT."""
  if not config.pbt.every_epochs:
    return None
  count = sum(int(np.sum(batch["mask"])) for batch in eval_sets["val"])

  def score(state, evaluation):
    correct = sum(metrics["correct"] for metrics in evaluation["val"])
    accuracy = jnp.where(state.hparams["status"] == steps.DIVERGED, -1.0, correct / count)
    return state.replace(hparams=dict(state.hparams, score=accuracy.astype(jnp.float32)))
  return jax.jit(score, donate_argnums=0)


def due(config, step: int, steps_per_epoch: int) -> bool:
  """Whether the epoch that begins at `step` begins with an exploit (a replay: with its
  values)."""
  epoch, within = divmod(step, steps_per_epoch)
  every = config.pbt.every_epochs
  return within == 0 and (bool(config.pbt.replay) or (
      bool(every) and epoch > 0 and epoch % every == 0))


def exploiter(config, found: list[dict], steps_per_epoch: int):
  """state -> state after an exploit and explore (at the state's step); of a replay, the
  state with the values of its epoch. None without PBT."""
  if config.pbt.replay:
    return _replayer(config, steps_per_epoch)
  if not config.pbt.every_epochs:
    return None
  pbt, count = config.pbt, len(found)
  replaced = int(count * pbt.fraction)
  first = {path: np.array([member[path] for member in found], np.float32)
           for path in explored(found[0])}
  factors = jnp.asarray(tuple(pbt.factors), jnp.float32)

  def exploit(state):
    key = jax.random.fold_in(jax.random.PRNGKey(config.run.seed), state.step[0])
    pick, keys = jax.random.split(key)
    order = jnp.argsort(-state.hparams["score"], stable=True)  # (ties: the lower index first)
    bottom = order[count - replaced:]
    parents = order[:replaced][jax.random.randint(pick, (replaced,), 0, replaced)]
    source = jnp.arange(count).at[bottom].set(parents)
    copied = jax.tree.map(lambda x: x[source], state).replace(dropout_key=state.dropout_key)
    chosen = jnp.zeros(count, bool).at[bottom].set(True)
    values = {path: _explore(path, read(copied, path), first[path], chosen, factors,
                             pbt.resample_probability, jax.random.fold_in(keys, i))
              for i, path in enumerate(first)}
    copied = write(copied, values)
    return copied.replace(hparams=dict(
        copied.hparams, parent=jnp.where(chosen, source, copied.hparams["parent"]),
        parent_step=jnp.where(chosen, state.step, copied.hparams["parent_step"])))
  return jax.jit(exploit, donate_argnums=0)


def _explore(path, value, first, chosen, factors, resample: float, key):
  """The chosen members' `value` (member axis first) perturbed by a factor, or resampled
  from the population's first values; within RANGES[path]."""
  low, high = RANGES[path]
  high = np.max(first) if high is None else high
  pick, coin, draw = jax.random.split(key, 3)
  shape = (value.shape[0],) + (1,) * (value.ndim - 1)
  factor = factors[jax.random.randint(pick, (value.shape[0],), 0, len(factors))].reshape(shape)
  fresh = jnp.asarray(first)[jax.random.randint(draw, (value.shape[0],), 0, len(first))]
  new = jnp.where((jax.random.uniform(coin, (value.shape[0],)) < resample).reshape(shape),
                  fresh.reshape((value.shape[0],) + first.shape[1:]), value * factor)
  if jnp.issubdtype(value.dtype, jnp.integer):
    new = jnp.round(new)
  new = jnp.clip(new, low, high).astype(value.dtype)
  return jnp.where(chosen.reshape(shape), new, value)


def read(state, path: str):
  """A member-stacked state's values of an explored field."""
  if path in IN_OPTIMIZER:
    return state.opt_state.hyperparams[config_file.field_name(path)]
  return state.hparams[_STEP_KEYS[path]]


def write(state, values: dict):
  """`state` with the explored fields' `values` ({path: member-stacked values})."""
  hyper = dict(state.opt_state.hyperparams)
  hparams = dict(state.hparams)
  for path, value in values.items():
    if path in IN_OPTIMIZER:
      hyper[config_file.field_name(path)] = value
    else:
      hparams[_STEP_KEYS[path]] = value
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper), hparams=hparams)


def current(state, found: list[dict]) -> dict:
  """The values to fetch with an evaluation: each explored field's, and the lineage."""
  return {"values": {path: read(state, path) for path in explored(found[0])},
          "parent": state.hparams["parent"], "parent_step": state.hparams["parent_step"]}


def row_fields(lineage: dict, index: int) -> dict:
  """A member's row fields from `lineage` (`current`'s values, fetched, with "since": the step
  its epoch began): its explored values now, and the member it copied if it was replaced at
  the start of this epoch. {} without PBT."""
  if not lineage:
    return {}
  fields = {config_file.field_name(path): _json(value[index])
            for path, value in lineage["values"].items()}
  parent, at = int(lineage["parent"][index]), int(lineage["parent_step"][index])
  return {**fields, **({"parent": parent, "parent_step": at}
                       if parent >= 0 and at >= lineage["since"] else {})}


def _json(value):
  """A fetched value as its shortest JSON form (float32 0.01 as 0.01, not 0.009999999776)."""
  value = np.asarray(value)
  if value.dtype.kind != "f":
    return value.tolist()
  short = [float(str(np.float32(x))) for x in value.ravel()]
  return short if value.ndim else short[0]


def best_schedule(found: list[dict], members: list[dict]) -> dict | None:
  """result.json's best member by validation (`members`: population.result's entries) and its
  schedule: the values it trained each epoch with, and whom it copied when."""
  ranked = [entry for entry in members if entry["best"]]
  if not ranked:
    return None
  best = max(ranked, key=lambda entry: entry["best"]["val_accuracy"])
  names = [config_file.field_name(path) for path in explored(found[0])]
  return {"member": best["member"], "val_accuracy": best["best"]["val_accuracy"],
          "schedule": [{"epoch": row["epoch"], **{n: row[n] for n in names if n in row},
                        **({"parent": row["parent"]} if "parent" in row else {})}
                       for row in best["rows"]]}


def _replay_source(config) -> tuple[list[str], list[dict]]:
  """(the paths the PBT run explored, the replayed member's rows) of `pbt.replay`, or one
  ConfigError line."""
  workdir, _, index = config.pbt.replay.rpartition(":")
  if not workdir or not index.isdigit():
    raise ConfigError(f"pbt.replay={config.pbt.replay!r} must be WORKDIR:MEMBER, e.g. "
                      "runs/pbt:3.")
  try:
    recorded = workdir_lib.read_config(workdir)
    rows = workdir_lib.by_member(workdir_lib.read_metrics(workdir, required=True))
  except (ReportError, OSError) as e:
    raise ConfigError(f"pbt.replay: {e}") from None
  if not recorded.pbt.every_epochs or not workdir_lib.result_is_current(
      workdir, max(mine[-1]["step"] for mine in rows.values())):
    raise ConfigError(f"pbt.replay: {workdir} is not a finished PBT run (its result.json and "
                      "config.json say so when it is): replay a finished one.")
  if int(index) not in rows:  # (every member has rows)
    raise ConfigError(f"pbt.replay: {workdir} has members 0 to {len(rows) - 1}, not "
                      f"{index}.")
  return explored(path for path, _ in recorded.population.members), rows[int(index)]


def replayed(config):
  """The config a replay trains: one member that varies the PBT run's explored fields (so
  that the program reads them from its state), starting from the member's first values; the
  config itself without `pbt.replay`. One ConfigError line for a replay that cannot be."""
  if not config.pbt.replay:
    return config
  if config.population.members or config.pbt.every_epochs:
    raise ConfigError("pbt.replay trains a single run: leave population.members empty and "
                      "pbt.every_epochs 0.")
  paths, rows = _replay_source(config)
  single = config.copy_and_resolve_references()
  single.population.members = tuple((path, (_first(rows, path),)) for path in paths)
  return single


def _first(rows, path):
  value = rows[0][config_file.field_name(path)]
  return tuple(value) if isinstance(value, list) else value


def _replayer(config, steps_per_epoch: int):
  """state -> the state with the replayed member's values of the epoch it is at (its last
  row's after the schedule ends)."""
  paths, rows = _replay_source(config)
  table = {path: jnp.asarray(np.array([row[config_file.field_name(path)] for row in rows],
                                      np.float32)) for path in paths}

  def replay(state):
    epoch = jnp.minimum(state.step[0] // steps_per_epoch, len(rows) - 1)
    return write(state, {path: values[epoch][None].astype(read(state, path).dtype)
                         for path, values in table.items()})
  return jax.jit(replay, donate_argnums=0)
