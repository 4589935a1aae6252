"""A larger model with the seed's recipe: every width doubled (Conv 64-128-256, Dense 256),
about 4x the parameters and FLOPs. Compare with configs/default.py to see what the architecture,
not the recipe, buys (README.md, "Training recipe")."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.conv_features = (64, 128, 256)
  config.model.dense_features = 256
  return config
