"""Config sections shared by every experiment, and the reference ("paper") defaults.

The shape (every job reads only its sections):

* ``job``: which job runs (``jreid.jobs.JOBS``).
* ``st``, ``fusion``: the spatial-temporal model and the logistic fusion
  (``docs/reference.md``: the reference's constants).
* ``eval``: methods, memory budget, CMC length, batch size, pictures.
* ``rerank``: k-reciprocal re-ranking ``{enabled, k1, k2, lambda_value}``.
* Training jobs add ``data``, ``model``, ``optimizer``, ``augment``, ``loss`` and
  ``train`` (seed, batch size, epochs): exactly the sections that shape the trained
  model, from which its digest is built (``jreid.stages.TRAINING_SECTIONS``).
* Locations and bookkeeping that do not shape results: ``data_dir``,
  ``manual_dir``, ``checkpoint``, ``log_every_steps``, ``compilation_cache_dir``,
  ``overwrite``.
"""

import ml_collections


def st_and_eval_config() -> ml_collections.ConfigDict:
  """Sections every job has: ST model, fusion, evaluation, re-ranking."""
  config = ml_collections.ConfigDict()
  config.job = "evaluate_features"
  # The features-file job: a features file and a folder of training image names.
  config.features = ""        # .mat/.npz with query_f, query_label, ... (docs/reference.md)
  config.train_dir = ""       # folder of training images (only the names are read)
  config.grammar = ""         # "market", "market_renamed", "duke", or "" for any (one per folder)
  config.num_parts = 1        # L2-normalise each of this many parts, then the whole vector

  config.st = ml_collections.ConfigDict()
  config.st.bin_width = 100   # frames per bin
  config.st.num_bins = 5000   # H (3000 for DukeMTMC-reID)
  config.st.sigma = 50.0      # Gaussian smoothing, in bins
  config.st.truncate = 3.0    # kernel covers |d| <= truncate * sigma bins
  config.st.eps = 1e-7        # > 0: the reference's epsilon in the mean and normalisations
  config.st.fps = 25.0        # frames per second of the time stamps (pictures in seconds)

  config.fusion = ml_collections.ConfigDict()
  config.fusion.visual_lambda = 1.0
  config.fusion.visual_gamma = 5.0
  config.fusion.st_lambda = 2.0
  config.fusion.st_gamma = 5.0

  config.eval = ml_collections.ConfigDict()
  config.eval.methods = ("visual", "st", "visual_rerank", "st_rerank")  # jreid.evaluate.METHODS
  config.eval.budget_elements = 1 << 22   # bound on any score block (rows x columns)
  config.eval.max_rank = 100              # length of the stored CMC curves
  config.eval.top_k = 10                  # gallery items per query in rank_lists.json
  config.eval.ranked_list_queries = 8     # queries drawn in ranked_lists.png

  # k-reciprocal re-ranking (Zhong et al. 2017) of the visual and the joint scores;
  # enabled=False drops the *_rerank methods.
  config.rerank = ml_collections.ConfigDict()
  config.rerank.enabled = True
  config.rerank.k1 = 20
  config.rerank.k2 = 6
  config.rerank.lambda_value = 0.3

  config.compilation_cache_dir = "default"  # "default": ~/.cache/jreid/xla; "": off
  return config


def training_config() -> ml_collections.ConfigDict:
  """The whole pipeline (train -> extract -> ST -> evaluate) with the reference recipe."""
  config = st_and_eval_config()
  del config.features, config.train_dir, config.grammar, config.num_parts
  config.job = "train_and_evaluate"
  config.data_dir = ""            # TFDS data dir (default ~/tensorflow_datasets; synthetic: <workdir>/tfds)
  config.manual_dir = ""          # Market-1501's zip/folder (default <data_dir>/downloads/manual)
  config.overwrite = False        # True: discard a workdir's products of other training settings

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "market1501"   # or "synthetic" (jreid.stages.DATASETS)
  config.data.image_size = (384, 192)  # the model's input, resized on the device
  config.data.transfer_size = ()       # uint8 boxes sent to the device; (): the dataset's (Market 128x64)
  config.data.sampler = "random"       # or "pk": ids_per_batch x images_per_id batches
  config.data.ids_per_batch = 8
  config.data.images_per_id = 4
  config.data.pk_epoch = "images"      # "pk" epochs: "images" (len // batch steps) or "identity_pass" (one pass of the sampler)
  config.data.shards = 0               # 0: one train shard per process (see TrainData)

  config.train = ml_collections.ConfigDict()
  config.train.seed = 0
  config.train.batch_size = 32    # global, over every device of every process
  config.train.epochs = 60

  config.augment = ml_collections.ConfigDict()
  config.augment.flip = True
  config.augment.erase_probability = 0.5
  config.augment.erase_area = (0.02, 0.4)
  config.augment.erase_min_aspect = 0.3
  config.augment.pad = 0          # pad-and-crop: pixels of padding (the mean colour), then a random crop (0: off)

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "resnet"  # a key of jreid.models.heads.BACKBONES: "resnet" or "mobilenet_v2"
  config.model.depth = 50
  config.model.width = 64
  config.model.stage_blocks = ()  # () = the depth's; e.g. (1, 1, 1, 1) for tiny models
  config.model.width_mult = 1.0    # mobilenet_v2's channel multiplier
  config.model.last_stride = 1
  config.model.head = "pcb"       # a key of jreid.models.heads.HEADS: "pcb" or "bnneck"
  config.model.parts = 6          # PCB; 1 = global pooling (features are normalised per part)
  config.model.bottleneck = 256
  config.model.dropout = 0.5
  config.model.dtype = "float32"  # or "bfloat16" (parameters stay float32)
  config.model.conv = "auto"      # "auto": on CPUs "matmul" (jreid.models.layers: 1x1 as matrix products, k x k on XLA's own kernel), elsewhere XLA's ("xla")
  config.model.imagenet = ""      # ImageNet backbone: .pth/.pt (torch.save), .safetensors or .npz

  config.loss = ml_collections.ConfigDict()
  config.loss.label_smoothing = 0.0   # epsilon of the cross-entropy's smoothed target
  config.loss.triplet_weight = 0.0    # x batch-hard triplet loss (0: off)
  config.loss.margin = 0.3            # triplet margin, Euclidean distance units

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"   # or "adam" (coupled L2 weight decay, as torch.optim.Adam)
  config.optimizer.lr = 0.01      # backbone
  config.optimizer.head_lr_multiplier = 10.0
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-4
  config.optimizer.decay_epochs = (40,)
  config.optimizer.decay = 0.1
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.warmup_law = "step"    # "step": linear every step; "epoch": reid-strong-baseline's per-epoch steps
  config.optimizer.warmup_factor = 0.01   # "epoch" law: the first epoch's fraction of the lr
  config.optimizer.adam_b1 = 0.9
  config.optimizer.adam_b2 = 0.999
  config.optimizer.adam_eps = 1e-8

  config.eval.batch_size = 128    # extraction batch (global)

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 500
  config.checkpoint.keep = 3
  config.log_every_steps = 50
  return config


def synthetic_world_config(**overrides) -> ml_collections.ConfigDict:
  """Fields of jreid.data.synthetic.WorldParams (its defaults), with overrides."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from jreid.data import synthetic  # pylint: disable=g-import-not-at-top  (no TensorFlow)
  fields = dataclasses.asdict(synthetic.WorldParams())
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ValueError(f"unknown synthetic world fields {sorted(unknown)}")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def scale_learning_rate(config: ml_collections.ConfigDict, reference_batch: int = 32) -> None:
  """Linear scaling rule: lr = reference lr x global batch / reference batch (in place)."""
  config.optimizer.lr = config.optimizer.lr * config.train.batch_size / reference_batch
