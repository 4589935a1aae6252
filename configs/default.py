"""The seed recipe: the Keras tutorial's CNN, Adam 1e-3, batch 128, 15 epochs, with dropout.

Every run field is here, in sections; variants (`configs/*.py`) import this and change a few.
Override on the command line by path: `--config.run.batch_size=512 --config.run.num_epochs=3`.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  config.run = run = ml_collections.ConfigDict()
  run.seed = 0                # parameters, dropout and the data order all derive from it
  run.num_epochs = 15
  run.num_train_steps = -1    # > 0 stops after this many steps; -1: the epochs decide
  run.batch_size = 128        # global: split over all devices of all processes

  config.data = data = ml_collections.ConfigDict()
  data.tfds_dir = ""          # tfds data dir; "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  data.idx_dir = ""           # local IDX files; "" -> $FMNIST_IDX_DIR or Debian's package
  # The decoded splits as .npy files (fmnist_jax/data_cache.py): later starts read them in a
  # fraction of a second, without TensorFlow. "" turns it off; $FMNIST_JAX_DATA_CACHE_DIR,
  # when set, takes precedence.
  data.cache_dir = "~/.cache/fmnist_jax/data"
  data.validation_size = 5000  # last N training images held out for model selection (0: none)
  # "device": whole split on the accelerator, on-device shuffling (fastest for this dataset);
  # "tfds": tf.data streaming (shuffle, batch, prefetch), per-process split, the general path.
  data.input_mode = "device"

  config.model = model = ml_collections.ConfigDict()
  model.conv_features = (32, 64, 128)
  model.dense_features = 128
  model.num_classes = 10
  model.dropout_rates = (0.25, 0.4, 0.3)  # after pool1, after pool2, after dense1
  model.dtype = "float32"                 # float32 | bfloat16 | float16 (on CPU: matmul operands)
  # Training convolutions: "xla" (lax.conv) or "im2col" (matmul form with a hand-written
  # backward; same parameters and function, faster training on CPU); "auto" picks im2col
  # on CPU and xla on GPU/TPU. Evaluation always uses "xla", the faster form for inference.
  model.conv_impl = "auto"
  # Initialisation (fmnist_jax/initializers.py; the same parameters, other starting values):
  # "whiten" sets 18 of conv1's filters from the training images' 3x3 patch covariance.
  model.conv1_init = "glorot"  # glorot (Keras' default) | whiten
  model.dirac_init = False     # True: conv2/conv3 start as identities on their inputs

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = "adam"           # adam | adamw | sgd (with momentum)
  opt.learning_rate = 1e-3    # peak learning rate
  opt.schedule = "constant"   # constant | cosine | warmup_cosine | warmup_linear
  opt.warmup_epochs = 0.0     # for warmup_cosine and warmup_linear (up, then down to 0)
  opt.weight_decay = 0.0      # adamw: decoupled; sgd: L2 added to the gradient
  opt.momentum = 0.9          # sgd only (Nesterov's momentum)
  # Lookahead: every N steps the slow weights move lookahead_alpha of the way to the
  # parameters, which restart from them (0: off).
  opt.lookahead_every = 0
  opt.lookahead_alpha = 0.5
  opt.label_smoothing = 0.0
  opt.ema_decay = 0.0         # > 0: evaluate (and report) an EMA of the parameters
  opt.skip_nonfinite_updates = False  # True: drop NaN/inf updates instead of stopping

  # On-device augmentation of training batches (fmnist_jax/augment.py); all off in the seed.
  config.augment = augment = ml_collections.ConfigDict()
  augment.translate = 0       # random shift by up to N pixels (pad and crop)
  # Horizontal flips: "off" | "random" (each image with probability 1/2) | "alternate" (each
  # image flipped every other epoch, as airbench does; input_mode="device").
  augment.flip = "off"
  augment.erase_size = 0      # random erasing of an N x N square ...
  augment.erase_prob = 0.0    # ... with this probability

  config.eval = evaluation = ml_collections.ConfigDict()
  evaluation.batch_size = 1000  # global; the last batch is padded and masked
  # Test-time augmentation: evaluate (and report) the mean log-probabilities of several views
  # of each image. Same parameters, more inference FLOPs; off in the seed. tta_flip: the image
  # and its mirror image (2x). tta_translate N > 0: views moved by (-N, -N) and (+N, +N)
  # pixels too (1/4 each, the image itself 1/2; 3x, 6x with tta_flip).
  evaluation.tta_flip = False
  evaluation.tta_translate = 0
  # Stop once an evaluation reaches this accuracy (0: off), e.g. for time-to-accuracy.
  evaluation.stop_at_accuracy = 0.0
  evaluation.stop_metric = "val_accuracy"  # val_accuracy | test_accuracy

  # Many models in one compiled program (fmnist_jax/population.py).
  config.population = population = ml_collections.ConfigDict()
  # (path, values) pairs, the members the product of the values in the order written, e.g.
  # (("run.seed", (0, 1, 2)),). A population may vary run.seed, optimizer.learning_rate,
  # weight_decay, label_smoothing, ema_decay, model.dropout_rates and the augment section's
  # fields (population.VARYING). (): one model.
  population.members = ()
  # Members computed side by side (vmap) in each pass over a population; passes run one after
  # another (lax.map). 0: auto (1 on CPU, where that is the faster; all at once on GPU/TPU).
  population.per_pass = 0

  # Population-based training (fmnist_jax/pbt.py): after every `every_epochs`-th epoch (0: off)
  # the bottom `fraction` of the members, ranked by validation accuracy, take the state of the
  # top fraction's and perturb the values they explore (the fields the population varies, but
  # run.seed and augment.flip) by one of `factors`, or draw them afresh from the population's
  # first values with `resample_probability`. `replay` ("WORKDIR:MEMBER"): a single run that
  # trains from scratch with a finished PBT member's schedule.
  config.pbt = pbt = ml_collections.ConfigDict()
  pbt.every_epochs = 0
  pbt.fraction = 0.25
  pbt.factors = (0.8, 1.25)
  pbt.resample_probability = 0.0
  pbt.replay = ""

  # Distillation (fmnist_jax/distill.py): train toward a finished run's ensemble. `teacher`: its
  # workdir (a single run or a population: its members that did not diverge, each at its best
  # checkpoint by validation); "" is off. The loss is (1 - weight) * cross-entropy(labels) +
  # weight * temperature**2 * KL(teacher || student), both softened by `temperature`.
  # `teacher_sees`: "precomputed" (its predictions on the training images, computed once at
  # start; they do not follow the student's augmentation) | "on_the_fly" (its forward passes on
  # each augmented batch inside the step). Their speed: docs/performance.md.
  config.distill = distill = ml_collections.ConfigDict()
  distill.teacher = ""
  distill.temperature = 4.0
  distill.weight = 0.9
  distill.teacher_sees = "precomputed"

  config.parallelism = par = ml_collections.ConfigDict()
  par.mode = "jit"            # jit (jit over a device Mesh, NamedSharding) | pmap
  par.steps_per_call = 10     # train steps fused into one compiled call (lax.scan)
  # Chunks per batch inside a step, gradients averaged: the same update, with cache-sized
  # chunks. 0: auto (32 images per device per chunk on CPU, the whole batch on GPU/TPU).
  par.microbatches = 0
  # JAX's persistent compilation cache: a repeated or resumed run skips XLA's compilation.
  # "" turns it off; $JAX_COMPILATION_CACHE_DIR, when set, takes precedence.
  par.compilation_cache_dir = "~/.cache/fmnist_jax/xla"

  # Saves come at epoch ends, at most every every_seconds (0: every epoch), at the end, and on
  # SIGTERM/Ctrl-C; a save's host work is deferred until later calls are queued.
  config.checkpoints = ckpt = ml_collections.ConfigDict()
  ckpt.every_seconds = 10.0
  ckpt.every_steps = 0        # > 0: also every N steps, mid-epoch
  ckpt.keep = 2               # the latest N ...
  ckpt.keep_best = 1          # ... plus the best N by validation accuracy
  # A resume with another run.batch_size or data.validation_size is refused (the saved step
  # count would mean another position): True continues from the saved step count anyway.
  ckpt.resume_with_changed_steps = False
  ckpt.asynchronous = True

  config.logging = log = ml_collections.ConfigDict()
  log.every_steps = 100
  log.write_report = True     # WORKDIR/report/ at the end (fmnist_jax.report)
  # A jax.profiler trace of the train steps from `first` to `last` into WORKDIR/plugins/profile/
  # (TensorBoard's Profile tab, ui.perfetto.dev; `python -m fmnist_jax.trace_gaps WORKDIR`
  # lists where the device waited). (0, 0): off.
  log.profile_steps = (0, 0)

  return config


def override(config, changes: dict):
  """`config` with each {"section.field": value} of `changes` set (how variants are written)."""
  for path, value in changes.items():
    section, field = path.split(".")
    config[section][field] = value
  return config
