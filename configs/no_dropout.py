"""The seed recipe without dropout: for the dropout study (compare with configs/default.py)."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.dropout_rates = (0.0, 0.0, 0.0)
  return config
