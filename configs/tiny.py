"""A tiny run for tests and quick checks: a narrow CNN, a few steps, small batches."""

from configs import default


def get_config():
  config = default.get_config()
  config.conv_features = (4, 8, 8)
  config.dense_features = 16
  config.batch_size = 16
  config.eval_batch_size = 32
  config.validation_size = 40
  config.num_epochs = 2
  config.log_every_steps = 5
  config.checkpoint_every_steps = 5
  config.checkpoint_every_seconds = 0.0  # every epoch: tests know where the checkpoints are
  config.async_checkpointing = False
  config.write_report = False
  return config
