"""A tiny run for tests and quick checks: a narrow CNN, a few steps, small batches."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.conv_features = (4, 8, 8)
  config.model.dense_features = 16
  config.run.batch_size = 16
  config.eval.batch_size = 32
  config.data.validation_size = 40
  config.run.num_epochs = 2
  config.logging.every_steps = 5
  config.checkpoints.every_steps = 5
  config.checkpoints.every_seconds = 0.0  # every epoch: tests know where the checkpoints are
  config.checkpoints.asynchronous = False
  config.logging.write_report = False
  return config
