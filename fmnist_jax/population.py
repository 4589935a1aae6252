"""Many models in one compiled program: a population of members that differ in their seed and
in hyperparameters that change neither a shape nor the program.

`config.population.members` names the fields that vary and their values, as (field, values) pairs;
the members are the product of the values in the order written, e.g.

    config.population.members = (("model.dropout_rates", ((0.25, 0.4, 0.3), (0.0, 0.0, 0.0))),
                         ("run.seed", (0, 1, 2, 3, 4)))

is 10 members: the first five with dropout, seeds 0-4. Every run is a population: an empty
one is a single member with the config's values (M = 1), trained by the same loop and programs.

The state of all members is one TrainState whose leaves have a leading member axis; the train
and evaluation programs are one member's, mapped over it (members side by side or one after
another: population.per_pass; one member is called directly, so a single run compiles the program
it always had). A field the population varies is an input of the program, not a constant
compiled into it: learning rate and weight decay in each member's optimizer state
(optax.inject_hyperparams), the other values in TrainState.hparams; a field it does not vary
stays a constant, as in a single run. Member m draws its parameters, dropout masks,
augmentations and batch order from its own seed, as a single run with its fields does: each
member is that single run, up to float rounding.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import augment, config_file, dataset, hardware, models, pbt
from fmnist_jax import state as state_lib, steps, workdir as workdir_lib
from fmnist_jax.configuration import INERT, SEED_LIMIT, validate_config
from fmnist_jax.errors import ConfigError
from fmnist_jax.parallel import Parallelism

# The paths a population may vary (anything else changes shapes or the compiled program): the
# seed, the optimizer's (in optax.inject_hyperparams' state, by their field names), and those a
# step reads (steps.STEP_FIELDS, their one list).
IN_OPTIMIZER = ("optimizer.learning_rate", "optimizer.weight_decay")
VARYING = ("run.seed", *IN_OPTIMIZER, *steps.STEP_FIELDS.values())


def members(config) -> list[dict]:
  """The members' varying fields, {path: value} each; [{}] (one member, nothing varies) for a
  plain config. Assumes `check`."""
  pairs = [(path, tuple(values)) for path, values in config.population.members]
  return [dict(zip([f for f, _ in pairs], combo))
          for combo in itertools.product(*[values for _, values in pairs])]


def member_config(config, member: dict):
  """The config of the single run that `member` is."""
  single = config.copy_and_resolve_references()
  single.population.members = ()
  for path, value in member.items():
    section, field = path.split(".")
    default = config[section][field]
    single[section][field] = tuple(value) if isinstance(default, tuple) else type(default)(value)
  return single


def values(config, found: list[dict], path: str) -> list:
  """Each member's value at `path`: its own where it varies, else the config's (what
  member_config would hold, without copying the config per member)."""
  return [member.get(path, config_file.get(config, path)) for member in found]


def describe(member: dict) -> str:
  return " ".join(f"{field}={value}" for field, value in plain(member).items())


def check(config) -> list[dict]:
  """The members, or one ConfigError line naming what to change. Before any data is read."""
  population, per_pass = config.population.members, config.population.per_pass
  if not population and per_pass:
    raise ConfigError(f"population.per_pass={per_pass} needs a population (population.members) "
                      "to pass over: set the members, or leave per_pass 0.")
  if not population:
    return members(config)
  if not isinstance(population, (tuple, list)) or not all(
      isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) for p in population):
    raise ConfigError(f"population.members={population!r} must be (path, values) pairs, e.g. "
                      "(('run.seed', (0, 1, 2)), ('optimizer.learning_rate', (1e-3, 3e-3))).")
  fields = [field for field, _ in population]
  for field, values in population:
    if config_file.renamed(field, ""):
      raise ConfigError(f"population field {config_file.renamed(field, '')}.")
    if field not in config_file.paths(config):
      close = config_file.nearest(field, VARYING)
      raise ConfigError(f"population field {field!r} is not a config field"
                        + (f"; did you mean {close[0]!r}?" if close else "")
                        + f" A population may vary {', '.join(VARYING)}.")
    if field not in VARYING:
      raise ConfigError(f"population field {field!r} changes the program or its shapes: run "
                        f"such values as separate runs; a population may vary "
                        f"{', '.join(VARYING)}.")
    if fields.count(field) > 1:
      raise ConfigError(f"population field {field!r} is named twice: give its values once.")
    if not isinstance(values, (tuple, list)) or not values:
      raise ConfigError(f"population values of {field!r} must be a non-empty tuple, got "
                        f"{values!r}.")
    _check_types(config, field, values)
    _check_distinct(field, values)
  if config.data.input_mode != "device":
    raise ConfigError("a population trains with data.input_mode='device' (one tf.data stream "
                      f"per run; got {config.data.input_mode!r}): set "
                      "--config.data.input_mode=device.")
  for field, values in population:  # (each value once: a product can be large)
    for value in values:
      try:
        validate_config(member_config(config, {field: value}))
      except ConfigError as e:
        problems = str(e).removeprefix("Invalid config:\n  - ").replace("\n  - ", "; ")
        raise ConfigError(f"population value {field}={value!r}: {problems}") from None
  count = math.prod(len(values) for _, values in population)
  if per_pass > count:
    raise ConfigError(f"population.per_pass={per_pass} is more than the population's {count} "
                      f"members: give at most {count} (or 0: all side by side).")
  _check_effect(config, dict(population))
  flips = dict(population).get("augment.flip", (config.augment.flip,))
  if {"random", "alternate"} <= set(flips):
    raise ConfigError("population augment.flip: 'alternate' flips come with the data order, "
                      "one for every member, so members flip 'random' or 'alternate', not "
                      "both: run them as two populations.")
  return members(config)


def _check_types(config, field: str, values) -> None:
  default = config_file.get(config, field)
  for value in values:
    if isinstance(default, tuple):
      ok = isinstance(value, (tuple, list)) and len(value) == len(default)
    elif isinstance(default, str):
      ok = value in augment.FLIPS
    elif isinstance(default, bool):
      ok = isinstance(value, bool)
    elif isinstance(default, int):
      ok = isinstance(value, int) and not isinstance(value, bool)
    else:
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
      raise ConfigError(f"population value {value!r} of {field!r} is not a "
                        f"{type(default).__name__} like the config's {default!r}.")
  if field == "run.seed" and any(not 0 <= v < SEED_LIMIT for v in values):
    raise ConfigError("population seeds must be in [0, 2**31): a member's seed is traced as "
                      "an int32.")


def _check_effect(config, varied: dict) -> None:
  """A varied field that no member's other values let act (configuration.INERT) trains
  identical members: refused, as duplicate values are."""
  for path, other, inert, why in INERT:
    others = varied.get(other, (config_file.get(config, other),))
    if path in varied and all(inert(value) for value in others):
      raise ConfigError(f"population field {path!r} has no effect here ({why}): its members "
                        "would be the same run; vary another field, or change "
                        f"{other} first.")


def _check_distinct(field: str, values) -> None:
  """Members that are the same run would make error bars of nothing: values compared as
  numbers (1e-5 and 0.00001 are one)."""
  seen = set()
  for value in values:
    key = tuple(value) if isinstance(value, (tuple, list)) else value
    if key in seen:
      raise ConfigError(f"population field {field!r} gives {value!r} twice: its members would "
                        "be the same run (a std of 0 over copies); give each value once.")
    seen.add(key)


def member_shards(found: list[dict], num_devices: int | None = None) -> int:
  """How many device groups split the member axis: the most that divide both the member and
  the device count (1: every device holds every member). Each group trains its own members."""
  return math.gcd(len(found), num_devices or jax.device_count())


def parallelism(config, found: list[dict]) -> Parallelism:
  """The run's devices: for a population under jit, its member axis split over device groups
  (under pmap every device holds every member and a part of each member's batch), checked to
  fit in memory (ConfigError) before anything is compiled."""
  shards = member_shards(found) if config.parallelism.mode == "jit" else 1
  par = Parallelism(config.parallelism.mode, member_shards=shards)
  check_memory(config, found, par, resolve_per_pass(config, par.devices[0].platform))
  return par


# The share of a device's memory the estimate may fill: it leaves out XLA's temporaries and,
# on a CPU, the host's own copies of the data.
MEMORY_SHARE = 0.75


def check_memory(config, found: list[dict], par, per_pass: int) -> None:
  """ConfigError, before anything is compiled, if the population needs more than a device
  group holds (MEMORY_SHARE of it); it says how many members fit. Each member holds its state
  (parameters, optimizer moments, EMA) and its batches (this call's and the next's, gathered
  while this one trains, and the epoch's order); each pass, one member's activations (forward
  and backward, float32)."""
  available = hardware.device_memory_bytes(par.devices[0])
  if not available:
    return
  usable, groups = MEMORY_SHARE * available, par.member_shards
  members = math.ceil(len(found) / groups)  # on each device group
  batch, calls = config.run.batch_size, config.parallelism.steps_per_call
  per_member = 4 * models.parameter_count(config) * (4 + bool(
      max(values(config, found, "optimizer.ema_decay"))))
  per_member += 2 * calls * batch * (28 * 28 + 4) + 4 * (dataset.NUM_TRAIN + calls * batch)
  per_pass_bytes = 4 * 2 * models.activations_per_image(config) * batch
  side_by_side = min(per_pass or members, members)
  need = members * per_member + side_by_side * per_pass_bytes
  if need > usable:
    fit = max(0, int((usable - side_by_side * per_pass_bytes) // per_member)) \
        if per_pass else int(usable // (per_member + per_pass_bytes))
    raise ConfigError(
        f"a population of {len(found)} members needs about {need / 2 ** 30:.1f} GiB on each "
        f"device ({members} members there: states, batches, activations), more than "
        f"{MEMORY_SHARE:.0%} of its {available / 2 ** 30:.1f} GiB: at most about "
        f"{fit * groups} members fit; give fewer values"
        + ("" if per_pass == 1 else ", or set --config.population.per_pass=1") + ".")


def step_options(config, found: list[dict], base: steps.StepOptions) -> steps.StepOptions:
  """The members' static options: each augmentation's largest value (its shapes), the hparams
  keys the population varies (traced; the others are the config's constants), that of several
  members one may stop while the others train (at stop_at_accuracy, or diverged: its state
  from before is kept), and whether a NaN/inf step diverges a member (not when
  optimizer.skip_nonfinite_updates skips it)."""
  largest = {key: max(steps.step_value(field, v) for v in values(config, found, field))
             for key, field in steps.STEP_FIELDS.items() if hasattr(base, key)}
  return dataclasses.replace(
      base, **largest,
      varying=tuple(key for key, field in steps.STEP_FIELDS.items() if field in found[0]),
      keep_stopped=len(found) > 1,
      stop_nonfinite=not config.optimizer.skip_nonfinite_updates)


def initial_state(config, found: list[dict], steps_per_epoch: int, total_steps: int, *,
                  conv_impl: str | None = None, adjust=None) -> state_lib.TrainState:
  """All members' initial states, stacked, on the host: member m's parameters and dropout key
  are those of a single run with its seed (and `adjust`, the recipe's initialisation)."""
  model = models.create_model(config, conv_impl=conv_impl)
  # Several members keep their learning rates and weight decays in the optimizer state (as
  # their checkpoints always have); one member only where the population names them.
  injected = len(found) > 1 or any(field in found[0] for field in IN_OPTIMIZER)
  tx = state_lib.member_optimizer(config, steps_per_epoch, total_steps) if injected else \
      state_lib.create_optimizer(config, state_lib.create_learning_rate_fn(
          config, steps_per_epoch, total_steps))
  ema = any(values(config, found, "optimizer.ema_decay"))
  column = {key: _column([steps.step_value(field, v) for v in values(config, found, field)])
            for key, field in steps.STEP_FIELDS.items()}
  column.update(pbt.columns(config, len(found)))
  optimizer = {config_file.field_name(path): np.array(values(config, found, path), np.float32)
               for path in IN_OPTIMIZER}
  seeds = np.array(values(config, found, "run.seed"), np.int32)

  def init(seed, hparams, optimizer):
    state = state_lib.init_state(model, tx, seed, ema, hparams=hparams, adjust=adjust)
    if not injected:
      return state
    return state.replace(opt_state=state.opt_state._replace(hyperparams={
        field: jnp.asarray(value) for field, value in optimizer.items()}))
  return jax.device_get(jax.jit(lambda *args: over_members(init, 0, *args))(
      seeds, column, optimizer))


def _column(member_values: list):
  """The members' values of a field as one array of its kind (int32 on device)."""
  kind = member_values[0]
  return np.array(member_values, bool if isinstance(kind, bool) else np.int32
                  if isinstance(kind, int) else np.float32)


def over_members(fn, per_pass: int, *stacked):
  """fn(*one member's arguments) for every member (leading axis of `stacked`): `per_pass`
  members side by side (vmap) per pass, the passes one after another (lax.map); 0: all in one
  pass. On CPU one member per pass is the faster (XLA's CPU convolutions and small matmuls do
  not gain from a member axis: docs/population.md); accelerators take them all at once."""
  members = jax.tree.leaves(stacked)[0].shape[0]
  if members == 1:  # one member: its own program, the axis a reshape (a single run's speed)
    one = fn(*jax.tree.map(lambda x: x[0], stacked))
    return jax.tree.map(lambda x: jnp.expand_dims(x, 0), one)
  if not per_pass or per_pass >= members:
    return jax.vmap(fn)(*stacked)
  return jax.lax.map(lambda args: fn(*args), stacked,
                     batch_size=per_pass if per_pass > 1 else None)


def resolve_per_pass(config, platform: str) -> int:
  """config.population.per_pass; 0 ("auto"): 1 on CPU with the im2col form (lax.conv's training
  step is slower still inside a loop over members), all members at once elsewhere."""
  im2col = models.resolve_conv_impl(config.model.conv_impl) == "im2col"
  return config.population.per_pass or (1 if platform == "cpu" and im2col else 0)


def train_call(state, batches, sums, steps_taken, teacher=None, *, axis_name=None,
               options=steps.StepOptions(), per_pass: int = 0):
  """steps.train_call for every member: batches (steps, members, batch, ...); the members share
  the `teacher` (fmnist_jax.distill)."""
  def member(state, batches, sums):
    return steps.train_call(state, batches, sums, steps_taken, teacher, axis_name=axis_name,
                            options=options)
  batches = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), batches)  # (members, steps, ...)
  return over_members(member, per_pass, state, batches, sums)


def eval_step(params, batch, *, apply_fn=None, axis_name=None, flip_average: bool = False,
              translate: int = 0, per_pass: int = 0):
  """steps.eval_step for every member's parameters on one batch: metrics per member."""
  def member(params):
    return steps.eval_step(params, batch, apply_fn=apply_fn, axis_name=axis_name,
                           flip_average=flip_average, translate=translate)
  return over_members(member, per_pass, params)


def needed_correct(target: float, count: int) -> int:
  """The fewest correct of `count` whose accuracy (correct / count, float64) is >= target."""
  need = max(0, math.floor(target * count) - 1)
  while need / count < target:
    need += 1
  return need


def stop_reached(config, eval_sets: dict):
  """state, evaluation -> state with REACHED (at its step) for the training members whose
  evaluation reached stop_at_accuracy (decided on the device, so no call waits for the host: a
  stopped member's later steps change nothing). None without stop_at_accuracy."""
  if not config.eval.stop_at_accuracy:
    return None
  split = config.eval.stop_metric.removesuffix("_accuracy")
  count = sum(int(np.sum(batch["mask"])) for batch in eval_sets[split])
  need = needed_correct(config.eval.stop_at_accuracy, count)

  def update(state, evaluation):
    correct = sum(metrics["correct"] for metrics in evaluation[split])
    status = state.hparams["status"]
    reached = (status == steps.TRAINING) & (correct >= need)
    return state.replace(hparams=dict(
        state.hparams, status=jnp.where(reached, steps.REACHED, status),
        status_step=jnp.where(reached, state.step, state.hparams["status_step"])))
  return jax.jit(update, donate_argnums=0)


def member_rows(found: list[dict], scalars: dict, train_sums, fetched: dict, status,
                last_rows: dict, lineage: dict | None = None) -> list[dict]:
  """One metrics row per member from an evaluation's fetched per-member sums and statuses;
  `scalars` gives the fields all share (epoch, elapsed_seconds). A member that is not training
  says so (`status`, `status_step`; one that diverged also `"diverged": true`), and one that
  did not train this epoch carries its train values from `last_rows` (its previous row). One
  member's row is `scalars` itself, without a member column: a single run's rows read as they
  always did. With PBT (`lineage`, pbt.row_fields), a row holds its member's values now and
  the member it copied at the start of the epoch."""
  if len(found) == 1:
    return [dict(scalars, **pbt.row_fields(lineage, 0))]
  rows = []
  for index, member in enumerate(found):
    row = {"member": index, **plain(member), "epoch": scalars["epoch"]}
    mine = {key: value[index] for key, value in train_sums.items()}
    if mine["count"] or index not in last_rows:
      row["train_loss"], row["train_accuracy"] = steps.summarize(mine)
    else:
      row["train_loss"], row["train_accuracy"] = (last_rows[index][k] for k in
                                                  ("train_loss", "train_accuracy"))
    for name, metrics in fetched.items():
      sums = {key: sum(np.asarray(m[key][index], np.float64) for m in metrics)
              for key in metrics[0]}
      row[f"{name}_loss"], row[f"{name}_accuracy"] = steps.summarize(sums)
      row[f"{name}_count"] = int(sums["count"])
    row.update(status_fields(status, index))
    row.update(pbt.row_fields(lineage, index))
    row["elapsed_seconds"] = scalars["elapsed_seconds"]
    rows.append(row)
  return rows


def status_fields(status, index: int) -> dict:
  """A member's status as row fields: none while it trains."""
  code, step = int(np.ravel(status[0])[index]), int(np.ravel(status[1])[index])
  if code == steps.TRAINING:
    return {}
  return {"status": steps.STATUS_NAMES[code], "status_step": step,
          **({"diverged": True} if code == steps.DIVERGED else {})}


def reopen(config, status, rows: list[dict]):
  """The statuses a resumed run starts from (host arrays): a member REACHED at a target this
  config no longer asks for (its row at that step is below eval.stop_at_accuracy, or there is
  no target) trains on; one whose row says it diverged is DIVERGED (a checkpoint from before
  the statuses)."""
  codes, at = (np.array(np.atleast_1d(x)) for x in status)
  target, metric = config.eval.stop_at_accuracy, config.eval.stop_metric
  by_member = workdir_lib.by_member(rows)
  for index in np.flatnonzero(codes == steps.REACHED):
    row = next((r for r in by_member.get(index, []) if r["step"] == at[index]), None)
    if row and row.get("diverged"):
      codes[index] = steps.DIVERGED
    elif not target or not row or row.get(metric, -1.0) < target:
      codes[index], at[index] = steps.TRAINING, 0
  return codes, at


def last_rows(rows: list[dict]) -> dict:
  """Each member's latest metrics row (by member index; 0 for a single run's)."""
  return {index: mine[-1] for index, mine in workdir_lib.by_member(rows).items()}


def tensorboard_tag(row: dict) -> str:
  """Where a metrics row goes in TensorBoard: memberNN/ for one of several members, the top
  for a single run's."""
  return f"member{row['member']:02d}/" if "member" in row else ""


def plain(member: dict) -> dict:
  """A member's fields as JSON values."""
  return {config_file.field_name(path): list(value) if isinstance(value, tuple) else value
          for path, value in member.items()}


def names(found: list[dict]) -> list[str]:
  """Each member's varying values ("learning_rate=0.001 seed=0"), to name it in a message;
  none for one member (a single run's messages name no member)."""
  return [describe(member) for member in found] if len(found) > 1 else []


def console_lines(found: list[dict], status) -> list[str]:
  """What the console says of the members when a run starts (`status`: the restored statuses,
  host values): how many train, and those that stopped before; nothing for one member."""
  if len(found) == 1:
    return []
  counts = ", ".join(f"{len({str(m[path]) for m in found})} {config_file.field_name(path)}"
                     for path in found[0])
  lines = [f"{len(found)} members train as one program ({counts}): the evaluation lines and the "
           "done line give the mean of those that did not diverge; each member's rows: "
           "metrics.jsonl (its member column) and the report"]
  codes, at = status
  for index in np.flatnonzero(np.asarray(codes) != steps.TRAINING):
    lines.append(f"member {index} ({describe(found[index])}) "
                 f"{steps.STATUS_NAMES[codes[index]]} at step {at[index]} before this resume: "
                 "it stays stopped")
  return lines


def none_training(codes) -> bool:
  """Whether no member trains any more (each reached the target or diverged): the run ends."""
  return not (np.asarray(codes) == steps.TRAINING).any()


def stop_line(config, codes) -> str:
  """Why the run stops before its last step: its members' statuses."""
  reached = int(np.sum(np.asarray(codes) == steps.REACHED))
  diverged = len(np.ravel(codes)) - reached
  return (f"{config.eval.stop_metric} >= stop_at_accuracy {config.eval.stop_at_accuracy:.4f}"
          + (f" in {reached} of {len(np.ravel(codes))} members ({diverged} diverged)"
             if diverged else ""))


def setting(row: dict, found: list[dict]) -> str:
  """A member's setting: its varying fields other than the seed ("" when only seeds vary)."""
  return describe({k: v for k, v in found[row["member"]].items() if k != "run.seed"})


def result(found: list[dict], rows: list[dict], step: int) -> dict:
  """result.json's summary of the run's rows up to `step`, the same at the end of the run and
  when rebuilt from metrics.jsonl: `final` (the row at `step`) and `best_by_val` (the row of
  highest validation accuracy; None without a validation split). Of several members both are
  the means over the members that did not diverge (each member's best taken by its own
  validation accuracy; `members` and `diverged` count them), and `population` holds each
  member's final and best rows and each setting's mean +- std."""
  rows = [r for r in rows if r["step"] <= step]
  if len(found) == 1:
    final = next((r for r in reversed(rows) if r["step"] == step), rows[-1] if rows else {})
    return {"final": {k: v for k, v in final.items() if k != "step"},
            "best_by_val": workdir_lib.best_by_val(rows)}
  by_member = workdir_lib.by_member(rows)
  per_member = [{"member": index, **plain(found[index]), "final": mine[-1],
                 "best": workdir_lib.best_by_val(mine)}
                for index, mine in sorted(by_member.items())]
  counted = [entry for entry in per_member if not entry["final"].get("diverged")]
  settings = {}
  for entry in counted:  # (a member that diverged is listed, not summed)
    settings.setdefault(setting(entry["final"], found), []).append(entry["final"])
  summary = {name: {key: mean_std([r.get(key) for r in finals])
                    for key in ("test_accuracy", "test_loss", "train_accuracy", "train_loss")}
             | {"members": len(finals)} for name, finals in settings.items()}
  diverged = len(per_member) - len(counted)
  bests = [entry["best"] for entry in counted if entry["best"]]
  return {"final": _mean_row([e["final"] for e in counted], diverged),
          "best_by_val": _mean_row(bests, diverged) if bests else None,
          "population": {"members": per_member, "settings": summary,
                         "best_member": pbt.best_schedule(found, [
                             {**e, "rows": by_member[e["member"]]} for e in counted])}}


def _mean_row(rows: list[dict], diverged: int) -> dict:
  """The members' mean of each number their rows share (a field they vary, and `member`,
  left out), with how many members it counts and how many diverged."""
  skip = {"member", "step", "status_step", "parent", "parent_step",
          *(config_file.field_name(p) for p in VARYING)}
  keys = [k for k, v in rows[0].items() if k not in skip and isinstance(v, (int, float))
          and not isinstance(v, bool) and all(isinstance(r.get(k), (int, float)) for r in rows)]
  return {key: float(np.mean([r[key] for r in rows])) for key in keys} | {
      "members": len(rows), "diverged": diverged}


def mean_std(values) -> list[float] | None:
  """[mean, sample std] of the values that are not None (std 0 for one value); None if none:
  the one summary of several runs' numbers (result.json, the report, the benchmarks)."""
  values = np.asarray([v for v in values if v is not None], np.float64)
  if not len(values):
    return None
  return [float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0]


def ensembles(config, found: list[dict], rows: list[dict]) -> dict[str, list[int]]:
  """The ensembles a report analyses ({name: member indices}): of every member that did not
  diverge (a single run: its one member), then, where the members differ in more than their
  seed, each setting's (not under PBT, whose members leave their first settings)."""
  last = last_rows(rows)
  healthy = [m for m in range(len(found)) if not last.get(m, {}).get("diverged")] or [0]
  groups = {"run" if len(found) == 1 else "ensemble of the members": healthy}
  settings = {}
  for m in healthy:
    settings.setdefault(setting({"member": m}, found), []).append(m)
  if len(settings) > 1 and not config.pbt.every_epochs:
    groups.update({f"ensemble of {name}": members for name, members in settings.items()})
  return groups


def curve_runs(rows: list[dict], found: list[dict]):
  """plots.curves' runs and groups of a report: the run's rows, or each member's by its
  setting."""
  if len(found) == 1:
    return {"run": rows}, None
  runs = {f"m{m}": mine for m, mine in workdir_lib.by_member(rows).items()}
  return runs, {label: setting(mine[0], found) or "every member"
                for label, mine in runs.items()}
