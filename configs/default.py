"""The seed recipe: the Keras tutorial's CNN, Adam 1e-3, batch 128, 15 epochs, with dropout.

Every run field is here; variants (`configs/*.py`) import this and change a few. Override on the
command line: `--config.batch_size=512 --config.num_epochs=3`.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  # --- Data -----------------------------------------------------------------------------------
  config.data_dir = ""           # tfds data dir; "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.idx_dir = ""            # local IDX files; "" -> $FMNIST_IDX_DIR or Debian's package
  # The decoded splits as .npy files (fmnist_jax/data_cache.py): later starts read them in a
  # fraction of a second, without TensorFlow. "" turns it off; $FMNIST_JAX_DATA_CACHE_DIR,
  # when set, takes precedence.
  config.data_cache_dir = "~/.cache/fmnist_jax/data"
  config.validation_size = 5000  # last N training images held out for model selection (0: none)
  # "device": whole split on the accelerator, on-device shuffling (fastest for this dataset);
  # "tfds": tf.data streaming (shuffle, batch, prefetch), per-process split, the general path.
  config.input_mode = "device"

  # --- Model ----------------------------------------------------------------------------------
  config.conv_features = (32, 64, 128)
  config.dense_features = 128
  config.num_classes = 10
  config.dropout_rates = (0.25, 0.4, 0.3)  # after pool1, after pool2, after dense1
  config.dtype = "float32"                 # float32 | bfloat16 | float16 (on CPU: matmul operands)
  # Training convolutions: "xla" (lax.conv) or "im2col" (matmul form with a hand-written
  # backward; same parameters and function, faster training on CPU); "auto" picks im2col
  # on CPU and xla on GPU/TPU. Evaluation always uses "xla", the faster form for inference.
  config.conv_impl = "auto"
  # Initialisation (fmnist_jax/initializers.py; the same parameters, other starting values):
  # "whiten" sets 18 of conv1's filters from the training images' 3x3 patch covariance.
  config.conv1_init = "glorot"   # glorot (Keras' default) | whiten
  config.dirac_init = False      # True: conv2/conv3 start as identities on their inputs

  # --- Optimisation ---------------------------------------------------------------------------
  config.optimizer = "adam"      # adam | adamw | sgd (with momentum)
  config.learning_rate = 1e-3    # peak learning rate
  config.schedule = "constant"   # constant | cosine | warmup_cosine | warmup_linear
  config.warmup_epochs = 0.0     # for warmup_cosine and warmup_linear (up, then down to 0)
  config.weight_decay = 0.0      # adamw: decoupled; sgd: L2 added to the gradient
  config.momentum = 0.9          # sgd only (Nesterov's momentum)
  # Lookahead: every N steps the slow weights move lookahead_alpha of the way to the
  # parameters, which restart from them (0: off).
  config.lookahead_every = 0
  config.lookahead_alpha = 0.5
  config.batch_size = 128        # global: split over all devices of all processes
  config.num_epochs = 15
  config.num_train_steps = -1    # > 0 stops after this many steps; -1: the epochs decide
  config.seed = 0                # parameters, dropout and the data order all derive from it
  config.label_smoothing = 0.0
  config.ema_decay = 0.0         # > 0: evaluate (and report) an EMA of the parameters
  # On-device augmentation of training batches (fmnist_jax/augment.py); all off in the seed.
  config.augment_translate = 0   # random shift by up to N pixels (pad and crop)
  config.augment_flip = False    # random horizontal flip
  config.augment_flip_alternate = False  # True: each image flipped every other epoch (airbench)
  config.augment_erase_size = 0  # random erasing of an N x N square ...
  config.augment_erase_prob = 0.0  # ... with this probability
  # Test-time augmentation: evaluate (and report) the mean log-probabilities of each image and
  # its mirror image. Same parameters, 2x the inference FLOPs; off in the seed.
  config.eval_flip_average = False
  # ... and N > 0 also averages views moved by (-N, -N) and (+N, +N) pixels (1/4 each, the
  # image itself 1/2): 3x the inference FLOPs (6x with flips).
  config.eval_translate = 0
  # Stop once an evaluation reaches this accuracy (0: off), e.g. for time-to-accuracy.
  config.stop_at_accuracy = 0.0
  config.stop_metric = "val_accuracy"  # val_accuracy | test_accuracy
  config.skip_nonfinite_updates = False  # True: drop NaN/inf updates instead of stopping
  # Many models in one compiled program (fmnist_jax/population.py): (field, values) pairs, the
  # members the product of the values in the order written, e.g. (("seed", (0, 1, 2)),). A
  # population may vary the seed, learning_rate, weight_decay, label_smoothing, ema_decay,
  # dropout_rates and the augment_* fields. (): one model.
  config.population = ()
  # Members computed side by side (vmap) in each pass over a population; passes run one after
  # another (lax.map). 0: auto (1 on CPU, where that is the faster; all at once on GPU/TPU).
  config.members_per_pass = 0

  # --- Parallelism and speed ------------------------------------------------------------------
  config.parallelism = "jit"     # jit (jit over a device Mesh, NamedSharding) | pmap
  config.steps_per_call = 10     # train steps fused into one compiled call (lax.scan)
  # Chunks per batch inside a step, gradients averaged: the same update, with cache-sized
  # chunks. 0: auto (32 images per device per chunk on CPU, the whole batch on GPU/TPU).
  config.microbatches = 0
  config.eval_batch_size = 1000  # global; the last batch is padded and masked
  # JAX's persistent compilation cache: a repeated or resumed run skips XLA's compilation.
  # "" turns it off; $JAX_COMPILATION_CACHE_DIR, when set, takes precedence.
  config.compilation_cache_dir = "~/.cache/fmnist_jax/xla"

  # --- Logging and checkpoints ----------------------------------------------------------------
  config.log_every_steps = 100
  # Saves come at epoch ends, at most every checkpoint_every_seconds (0: every epoch), at the
  # end, and on SIGTERM/Ctrl-C; a save's host work is deferred until later calls are queued.
  config.checkpoint_every_seconds = 10.0
  config.checkpoint_every_steps = 0     # > 0: also every N steps, mid-epoch
  config.keep_checkpoints = 2           # the latest N ...
  config.keep_best_checkpoints = 1      # ... plus the best N by validation accuracy
  # A resume with another batch_size or validation_size is refused (the saved step count
  # would mean another position): True continues from the saved step count anyway.
  config.resume_with_changed_steps = False
  config.async_checkpointing = True
  config.write_report = True            # WORKDIR/report/ at the end (fmnist_jax.report)
  # A jax.profiler trace of the train steps from `first` to `last` into WORKDIR/plugins/profile/
  # (TensorBoard's Profile tab, ui.perfetto.dev; `python -m fmnist_jax.trace_gaps WORKDIR`
  # lists where the device waited). (0, 0): off.
  config.profile_steps = (0, 0)

  return config
