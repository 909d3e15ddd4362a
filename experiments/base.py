"""Config fields shared by every experiment: ST model, fusion and evaluation.

The defaults are the reference ("paper") settings of ST_REID_REFERENCE.md.
"""

import ml_collections


def st_and_eval_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.features = ""        # features file (.mat/.npz); empty: run the training pipeline
  config.train_dir = ""       # folder of training image names (features-file path)
  config.grammar = ""         # "market", "market_renamed", "duke", or "" for any
  config.num_parts = 1        # L2-normalise each of this many parts, then the whole vector

  config.st = ml_collections.ConfigDict()
  config.st.bin_width = 100   # frames per bin
  config.st.num_bins = 5000   # H (3000 for DukeMTMC-reID)
  config.st.sigma = 50.0      # Gaussian smoothing, in bins
  config.st.truncate = 3.0    # kernel covers |d| <= truncate * sigma bins
  config.st.eps = 1e-7

  config.fusion = ml_collections.ConfigDict()
  config.fusion.visual_lambda = 1.0
  config.fusion.visual_gamma = 5.0
  config.fusion.st_lambda = 2.0
  config.fusion.st_gamma = 5.0

  config.eval = ml_collections.ConfigDict()
  config.eval.query_chunk = 0             # queries per chunk; 0: from chunk_elements
  config.eval.chunk_elements = 1 << 22    # bound on chunk x gallery (memory)
  config.eval.max_rank = 100              # length of the stored CMC curves

  # k-reciprocal re-ranking (Zhong et al. 2017) of the visual and the joint scores.
  config.rerank = True
  config.rerank_k1 = 20
  config.rerank_k2 = 6
  config.rerank_lambda = 0.3
  return config


def training_config() -> ml_collections.ConfigDict:
  """The whole pipeline (train -> extract -> ST -> evaluate) with the reference recipe."""
  config = st_and_eval_config()
  config.dataset = "market1501"   # or "synthetic"
  config.data_dir = ""            # TFDS data dir (default ~/tensorflow_datasets)
  config.manual_dir = ""          # where Market-1501's zip/folder lies (default <data_dir>/downloads/manual)
  config.seed = 0

  config.image_size = (384, 192)
  config.batch_size = 32          # global, over every device of every process
  config.eval_batch_size = 128
  config.epochs = 60
  config.sampler = "random"       # or "pk": ids_per_batch x images_per_id batches
  config.ids_per_batch = 8
  config.images_per_id = 4
  config.data_shards = 0          # 0: one train shard per process (see TrainData)

  config.augment = ml_collections.ConfigDict()
  config.augment.flip = True
  config.augment.erase_probability = 0.5
  config.augment.erase_area = (0.02, 0.4)
  config.augment.erase_min_aspect = 0.3
  config.augment.pad = 0          # pad-and-crop: pixels of black padding, then a random crop (0: off)

  config.model = ml_collections.ConfigDict()
  config.model.depth = 50
  config.model.width = 64
  config.model.stage_blocks = ()  # () = the depth's; e.g. (1, 1, 1, 1) for tiny models
  config.model.last_stride = 1
  config.model.head = "pcb"       # a key of jreid.models.heads.HEADS: "pcb" or "bnneck"
  config.model.parts = 6          # PCB; 1 = global pooling (bnneck)
  config.model.bottleneck = 256
  config.model.dropout = 0.5
  config.model.dtype = "float32"  # or "bfloat16" (parameters stay float32)
  config.model.imagenet = ""      # torchvision/timm ResNet .safetensors or .npz

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
  config.optimizer.adam_b1 = 0.9
  config.optimizer.adam_b2 = 0.999
  config.optimizer.adam_eps = 1e-8

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.ranked_list_queries = 8
  config.num_parts = 6            # features are normalised per PCB part
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
  config.optimizer.lr = config.optimizer.lr * config.batch_size / reference_batch
