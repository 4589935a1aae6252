import pytest

from configs import best, default, dropout_study, no_dropout, tiny, wide
from conftest import tiny_config
from fmnist_jax import configuration
from fmnist_jax.configuration import ConfigError, validate_config


@pytest.mark.parametrize("module", [default, no_dropout, tiny, best, wide, dropout_study])
def test_shipped_configs_are_valid(module):
  from fmnist_jax import population
  validate_config(module.get_config())
  population.check(module.get_config())


def test_default_is_the_seed_recipe():
  config = default.get_config()
  assert (config.optimizer.name, config.optimizer.learning_rate, config.run.batch_size,
          config.run.num_epochs) == \
      ("adam", 1e-3, 128, 15)
  assert tuple(config.model.dropout_rates) == (0.25, 0.4, 0.3)
  assert tuple(no_dropout.get_config().model.dropout_rates) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("field,value,message", [
    ("optimizer.name", "adamax", "optimizer.name='adamax' is not one of adam, adamw, sgd"),
    ("optimizer.schedule", "linear", "optimizer.schedule='linear'"),
    ("parallelism.mode", "pjit", "parallelism.mode='pjit'"),
    ("data.input_mode", "disk", "data.input_mode='disk'"),
    ("model.dtype", "float64", "model.dtype='float64'"),
    ("run.batch_size", 0, "run.batch_size=0 must be a positive integer"),
    ("run.batch_size", -8, "run.batch_size=-8"),
    ("optimizer.learning_rate", 0.0, "optimizer.learning_rate=0.0 must be > 0"),
    ("optimizer.learning_rate", -1e-3, "optimizer.learning_rate=-0.001"),
    ("model.dropout_rates", (0.25, 1.0, 0.3), "each in \\[0, 1\\)"),
    ("model.dropout_rates", (0.5, 0.5), "must be three rates"),
    ("run.num_epochs", 0, "run.num_epochs=0"),
    ("run.num_train_steps", 0, "run.num_train_steps=0"),
    ("data.validation_size", 60_000, "leaves 0 training images"),
    ("data.validation_size", -1, "data.validation_size=-1"),
    ("parallelism.steps_per_call", 0, "parallelism.steps_per_call=0"),
    ("model.conv_features", (32, 0, 128), "conv_features"),
    ("optimizer.label_smoothing", 1.0, "optimizer.label_smoothing=1.0 must be in \\[0, 1\\)"),
    ("optimizer.ema_decay", -0.1, "optimizer.ema_decay=-0.1"),
    ("augment.translate", 20, "augment.translate=20: shifts of more than 8"),
    ("augment.erase_prob", 1.5, "augment.erase_prob=1.5"),
    ("parallelism.microbatches", 3, "parallelism.microbatches=3 must divide run.batch_size=128"),
    ("parallelism.microbatches", -1, "parallelism.microbatches=-1 must be an integer >= 0"),
    ("checkpoints.every_steps", -5, "checkpoints.every_steps=-5 must be an integer >= 0"),
    ("eval.stop_metric", "train_accuracy", "eval.stop_metric='train_accuracy'"),
    ("eval.stop_at_accuracy", 1.5, "eval.stop_at_accuracy=1.5 must be in \\[0, 1\\]"),
    ("logging.profile_steps", (500, 100), "profile_steps=\\(500, 100\\) must be \\(first, last\\)"),
    ("logging.profile_steps", (-5, 10), "profile_steps=\\(-5, 10\\)"),
])
def test_bad_values_are_named_with_what_to_change(field, value, message):
  config = default.override(default.get_config(), {field: value})
  with pytest.raises(ConfigError, match=message):
    validate_config(config)


def test_best_keeps_the_seed_architecture():
  seed, recipe = default.get_config(), best.get_config()
  assert recipe.model.conv_features == seed.model.conv_features
  assert (recipe.model.dense_features, recipe.model.num_classes) == (
      seed.model.dense_features, seed.model.num_classes)


def test_every_problem_is_reported_at_once():
  config = default.get_config()
  config.run.batch_size, config.optimizer.name = 0, "nope"
  with pytest.raises(ConfigError) as error:
    validate_config(config)
  assert "batch_size=0" in str(error.value) and "optimizer.name='nope'" in str(error.value)


@pytest.mark.parametrize("path", ["configs/speedrun.py", "configs/best.py", "configs/distill.py"])
def test_every_variant_is_a_valid_config_of_the_seed_network(path):
  """Variants change the recipe, never the network: 241,546 parameters each."""
  import jax
  from fmnist_jax import config_file, state
  module = config_file.load_module(path)
  for name in module.VARIANTS:
    config = module.get_config(name)
    validate_config(config)
    shapes = jax.eval_shape(lambda c=config: state.initial_state(c).params)
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 241_546, name
  with pytest.raises(ValueError, match="has no variant 'nope'; its variants are"):
    module.get_config("nope")


def test_config_file_loads_a_variant_and_names_a_missing_one():
  from fmnist_jax import config_file
  assert config_file.load("configs/speedrun.py:b1024_e30").run.batch_size == 1024
  assert config_file.load("configs/default.py").run.batch_size == 128
  with pytest.raises(ConfigError, match=r"get_config\(nope\) in 'configs/speedrun.py' failed: "
                     r"ValueError: .*its variants are b512_e20"):
    config_file.load("configs/speedrun.py:nope")


@pytest.mark.parametrize("changes, warned", [
    ({"optimizer.schedule": "warmup_linear", "optimizer.warmup_epochs": 3.0}, True),
    ({"optimizer.schedule": "warmup_cosine", "optimizer.warmup_epochs": 1.0,
      "run.num_train_steps": 100}, True),
    ({"optimizer.schedule": "warmup_cosine", "optimizer.warmup_epochs": 1.0}, False),
    ({"optimizer.schedule": "cosine", "optimizer.warmup_epochs": 5.0}, False),
])
def test_a_warmup_the_run_never_finishes_is_one_warning_line(changes, warned):
  from fmnist_jax import configuration
  config = default.override(default.get_config(), {"run.num_epochs": 2, **changes})
  lines = configuration.warnings(config)
  assert bool(lines) == warned
  assert all("never reaches its peak" in line and "\n" not in line for line in lines)


@pytest.mark.parametrize("changes,members,inert", [
    ({"optimizer.name": "adam"}, (("optimizer.weight_decay", (0.0, 1e-4)),),
     "optimizer.weight_decay"),
    ({"augment.erase_prob": 0.0}, (("augment.erase_size", (0, 8)),), "augment.erase_size"),
])
def test_a_field_with_no_effect_is_refused_in_a_population_and_said_of_a_single_run(
    changes, members, inert):
  from fmnist_jax import population
  from fmnist_jax.errors import ConfigError
  with pytest.raises(ConfigError, match=f"population field '{inert}' has no effect here"):
    population.check(tiny_config(changes, population=dict(members=members)))
  single = tiny_config({**changes, inert: members[0][1][1]})
  (line,) = configuration.warnings(single)
  assert line.startswith(f"{inert}=") and "has no effect" in line
  assert configuration.warnings(tiny_config(changes)) == []  # (0 is no claim of an effect)
