import pytest

from configs import best, default, no_dropout, tiny, wide
from fmnist_jax.configuration import ConfigError, validate_config


@pytest.mark.parametrize("module", [default, no_dropout, tiny, best, wide])
def test_shipped_configs_are_valid(module):
  validate_config(module.get_config())


def test_default_is_the_seed_recipe():
  config = default.get_config()
  assert (config.optimizer, config.learning_rate, config.batch_size, config.num_epochs) == \
      ("adam", 1e-3, 128, 15)
  assert tuple(config.dropout_rates) == (0.25, 0.4, 0.3)
  assert tuple(no_dropout.get_config().dropout_rates) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "adamax", "optimizer='adamax' is not one of adam, adamw, sgd"),
    ("schedule", "linear", "schedule='linear'"),
    ("parallelism", "pjit", "parallelism='pjit'"),
    ("input_mode", "disk", "input_mode='disk'"),
    ("dtype", "float64", "dtype='float64'"),
    ("batch_size", 0, "batch_size=0 must be a positive integer"),
    ("batch_size", -8, "batch_size=-8"),
    ("learning_rate", 0.0, "learning_rate=0.0 must be > 0"),
    ("learning_rate", -1e-3, "learning_rate=-0.001"),
    ("dropout_rates", (0.25, 1.0, 0.3), "each in \\[0, 1\\)"),
    ("dropout_rates", (0.5, 0.5), "must be three rates"),
    ("num_epochs", 0, "num_epochs=0"),
    ("num_train_steps", 0, "num_train_steps=0"),
    ("validation_size", 60_000, "leaves 0 training images"),
    ("validation_size", -1, "validation_size=-1"),
    ("steps_per_call", 0, "steps_per_call=0"),
    ("conv_features", (32, 0, 128), "conv_features"),
    ("label_smoothing", 1.0, "label_smoothing=1.0 must be in \\[0, 1\\)"),
    ("ema_decay", -0.1, "ema_decay=-0.1"),
    ("augment_translate", 20, "augment_translate=20: shifts of more than 8"),
    ("augment_erase_prob", 1.5, "augment_erase_prob=1.5"),
    ("microbatches", 3, "microbatches=3 must divide batch_size=128"),
    ("microbatches", -1, "microbatches=-1 must be an integer >= 0"),
    ("checkpoint_every_steps", -5, "checkpoint_every_steps=-5 must be an integer >= 0"),
    ("stop_metric", "train_accuracy", "stop_metric='train_accuracy'"),
    ("stop_at_accuracy", 1.5, "stop_at_accuracy=1.5 must be in \\[0, 1\\]"),
    ("profile_steps", (500, 100), "profile_steps=\\(500, 100\\) must be \\(first, last\\)"),
    ("profile_steps", (-5, 10), "profile_steps=\\(-5, 10\\)"),
])
def test_bad_values_are_named_with_what_to_change(field, value, message):
  config = default.get_config()
  config[field] = value
  with pytest.raises(ConfigError, match=message):
    validate_config(config)


def test_best_keeps_the_seed_architecture():
  seed, recipe = default.get_config(), best.get_config()
  for field in ("conv_features", "dense_features", "num_classes"):
    assert recipe[field] == seed[field]


def test_every_problem_is_reported_at_once():
  config = default.get_config()
  config.batch_size, config.optimizer = 0, "nope"
  with pytest.raises(ConfigError) as error:
    validate_config(config)
  assert "batch_size=0" in str(error.value) and "optimizer='nope'" in str(error.value)


@pytest.mark.parametrize("path", ["configs/speedrun.py", "configs/best.py"])
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
  assert config_file.load("configs/speedrun.py:b1024_e30").batch_size == 1024
  assert config_file.load("configs/default.py").batch_size == 128
  with pytest.raises(ConfigError, match=r"get_config\(nope\) in 'configs/speedrun.py' failed: "
                     r"ValueError: .*its variants are b512_e20"):
    config_file.load("configs/speedrun.py:nope")
