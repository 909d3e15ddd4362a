"""The workdir-cached stages of a job, and the translation of configs into typed
parameters.

prepare data -> train -> extract -> fit ST -> evaluate -> pictures (and the ST
picture, after the results). Each stage writes its products to the workdir and
reuses them by the one rule of ``jreid.stamps``: a product is reused only when its
stage's stamp holds the digest of the inputs now (with the stage's version) and the
product file the content the stamp recorded. Every stamp but training's is written
after its products, so a stage cut short is redone; the train stamp is written
before training starts, because its products are the checkpoints, each complete
when written, and a cut-short run resumes from the latest. The evaluation removes
the earlier run's evaluation files before writing its own (``stamps.retire``).

* data: the synthetic world (digest of its parameters) and the TFDS dataset (a
  digest of the manual source's names, sizes and times, kept beside it).
* train: checkpoints; digest of the training sections of the config (an
  allowlist, ``TRAINING_SECTIONS``) without ``train.epochs`` (a longer run
  resumes a shorter one: the schedule does not depend on it), of the data and of
  the train stage's version (``stamps.VERSIONS``).
  Checkpoints of other settings are never resumed: the job stops and says so,
  unless ``config.overwrite`` is set, which discards them.
* extract: ``features.npz``; digest of the training digest and ``train.epochs``.
  When it is current the train stage restores no model (nothing needs one).
* fit ST: ``st_model.npz``; digest of the ST constants and the training records.
* evaluate and pictures: always redone (cheap next to the rest); their inputs
  are the products above.

This module, ``jreid.jobs`` and ``jreid.validation`` are the only ones that read
configs: the library below them takes typed parameters (``st_params``,
``train_params``, ``model_config``, ...). It stays one module, a little over 500
lines, so that each stage sits beside the translation of the config sections it
reads, and no fourth module reads configs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

from absl import logging
import jax.numpy as jnp
import ml_collections
import numpy as np

from jreid import errors
from jreid import evaluate as evaluate_lib
from jreid import feature_files
from jreid import files
from jreid import metrics
from jreid import plots
from jreid import progress
from jreid import protocol
from jreid import records as records_lib
from jreid import rerank as rerank_lib
from jreid import scoring
from jreid import search as search_lib
from jreid import sharding
from jreid import st as st_lib
from jreid import stamps
from jreid.models import heads
from jreid.models import mobilenet
from jreid.models import resnet

RESULTS_FILE = "results.json"
ST_MODEL_FILE = "st_model.npz"
ST_PLOT_FILE = "st_distributions.png"
FEATURES_FILE = "features.npz"
CMC_FILE, CMC_PLOT_FILE, RANKED_LISTS_PLOT_FILE = "cmc.json", "cmc.png", "ranked_lists.png"
# What an evaluation writes, every time it runs.
EVALUATION_FILES = (RESULTS_FILE, CMC_FILE, CMC_PLOT_FILE, search_lib.RANK_LISTS_FILE,
                    RANKED_LISTS_PLOT_FILE)
# Every product a job may leave in its workdir (besides stamps and the prepared data).
PRODUCTS = EVALUATION_FILES + (ST_MODEL_FILE, ST_PLOT_FILE, FEATURES_FILE, "checkpoints",
                               "export")
# Sections of a training config that shape the trained model and its features.
TRAINING_SECTIONS = ("data", "model", "optimizer", "augment", "loss", "train")


# ----------------------------------------------------------------------------- parameters

def st_params(config: ml_collections.ConfigDict) -> st_lib.STParams:
  s = config.st
  return st_lib.STParams(bin_width=s.bin_width, num_bins=s.num_bins, sigma=s.sigma,
                         truncate=s.truncate, eps=s.eps)


def fusion_params(config: ml_collections.ConfigDict) -> scoring.FusionParams:
  return scoring.FusionParams(**config.fusion.to_dict())


def rerank_params(config: ml_collections.ConfigDict) -> rerank_lib.RerankParams:
  r = config.rerank
  return rerank_lib.RerankParams(k1=r.k1, k2=r.k2, lambda_value=r.lambda_value)


def model_config(config: ml_collections.ConfigDict) -> heads.ModelConfig:
  """config.model as the network's typed config (the backbone by ``BACKBONE_CONFIGS``)."""
  m = config.model
  name = m.get("backbone", "resnet")
  if name not in BACKBONE_CONFIGS:
    raise ValueError(f"model.backbone={name!r}: expected one of {tuple(BACKBONE_CONFIGS)}")
  dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
  return heads.ModelConfig(backbone=BACKBONE_CONFIGS[name](m, dtype), head=m.head,
                           parts=m.parts, bottleneck=m.bottleneck, dropout=m.dropout)


def compiler_options(config: ml_collections.ConfigDict) -> dict[str, str]:
  """XLA compile options of the steps that run config.model's network (its backbone
  config's ``compiler_options()``: on a CPU a ResNet's convolutions on XLA's own kernel)."""
  return model_config(config).backbone.compiler_options()


# Backbones by config.model.backbone (the keys of heads.BACKBONES): (config.model,
# compute dtype) -> the backbone's typed config.
BACKBONE_CONFIGS: dict[str, Callable[[Any, Any], Any]] = {
    "resnet": lambda m, dtype: resnet.BackboneConfig(
        depth=m.depth, last_stride=m.last_stride, width=m.width,
        stage_blocks=tuple(m.stage_blocks) if m.stage_blocks else None, dtype=dtype,
        conv=m.get("conv", "auto")),
    "mobilenet_v2": lambda m, dtype: mobilenet.MobileNetV2Config(
        width_mult=m.get("width_mult", 1.0), last_stride=m.last_stride, dtype=dtype,
        conv=m.get("conv", "auto")),
}


def train_params(config: ml_collections.ConfigDict):
  """The config's training sections as ``train.TrainParams`` (also a trained workdir's
  stamped sections, which have no ``checkpoint`` or ``log_every_steps``)."""
  from jreid import augment  # pylint: disable=g-import-not-at-top
  from jreid import train as train_lib  # pylint: disable=g-import-not-at-top
  o, a, t = config.optimizer, config.augment, config.train
  optimizer = train_lib.OptimizerParams(
      name=o.name, lr=o.lr, head_lr_multiplier=o.head_lr_multiplier, momentum=o.momentum,
      nesterov=o.nesterov, weight_decay=o.weight_decay, decay_epochs=tuple(o.decay_epochs),
      decay=o.decay, warmup_epochs=o.warmup_epochs, warmup_law=o.get("warmup_law", "step"),
      warmup_factor=o.get("warmup_factor", 0.01), adam_b1=o.adam_b1, adam_b2=o.adam_b2,
      adam_eps=o.adam_eps)
  checkpoint = (train_lib.CheckpointParams(every_steps=config.checkpoint.every_steps,
                                           keep=config.checkpoint.keep)
                if "checkpoint" in config else train_lib.CheckpointParams())
  return train_lib.TrainParams(
      model=model_config(config), imagenet=config.model.get("imagenet", ""),
      optimizer=optimizer, epochs=t.epochs, batch_size=t.batch_size, seed=t.seed,
      image_size=tuple(config.data.image_size),
      augment=augment.AugmentParams(flip=a.flip, erase_probability=a.erase_probability,
                                    erase_area=tuple(a.erase_area),
                                    erase_min_aspect=a.erase_min_aspect),
      crop_pad=a.get("pad", 0), loss=config.loss.to_dict(), checkpoint=checkpoint,
      log_every_steps=config.get("log_every_steps", 50))


def methods(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The evaluation methods of the config; re-ranking ones only with rerank.enabled."""
  return tuple(m for m in config.eval.methods
               if config.rerank.enabled or not evaluate_lib.METHODS[m].rerank)


def check_rerank_sizes(config: ml_collections.ConfigDict, num_items: int) -> None:
  """Stops when rerank.k1 or k2 is beyond ``num_items`` (query + gallery), which every
  job knows before it trains, extracts or writes anything."""
  if any(evaluate_lib.METHODS[m].rerank for m in methods(config)):
    problems = rerank_lib.neighbourhood_problems(rerank_params(config), num_items)
    if problems:
      raise errors.InputError("; ".join(f"rerank.{p}" for p in problems))


def training_sections(config: ml_collections.ConfigDict) -> dict:
  """The config's training sections as JSON values (what the train stamp records).

  ``model.backbone`` and ``width_mult`` are recorded only
  for a backbone other than ResNet, ``model.conv`` never (it orders the sums, as the
  device does, and trains the same model), ``data.pk_epoch`` only as "identity_pass"
  with the "pk" sampler, ``optimizer.warmup_law`` and ``warmup_factor`` only with
  the per-epoch law: at their defaults the stamps and digests carry neither.
  """
  sections = json.loads(json.dumps({k: config[k].to_dict() for k in TRAINING_SECTIONS
                                    if k in config}, default=str))
  data = sections.get("data", {})
  if data.get("sampler") != "pk" or data.get("pk_epoch", "images") == "images":
    data.pop("pk_epoch", None)
  model = sections.get("model", {})
  model.pop("conv", None)
  if model.get("backbone", "resnet") == "resnet":
    model.pop("backbone", None)  # the default backbone: stamps and digests carry neither
    model.pop("width_mult", None)
  optimizer = sections.get("optimizer", {})
  if optimizer.get("warmup_law", "step") == "step":
    # The per-step law (the default) ignores warmup_factor, and its stamps and
    # digests carry neither field.
    optimizer.pop("warmup_law", None)
    optimizer.pop("warmup_factor", None)
  return sections


def training_digest(config: ml_collections.ConfigDict, data_digest: str) -> str:
  """Digest of what shapes the checkpoints: the training sections but train.epochs."""
  sections = training_sections(config)
  sections["train"] = {k: v for k, v in sections.get("train", {}).items() if k != "epochs"}
  return stamps.digest_of("train", dict(sections=sections, data=data_digest))


def features_digest(config: ml_collections.ConfigDict, data_digest: str) -> str:
  return stamps.digest_of("extract", dict(training=training_digest(config, data_digest),
                                          epochs=config.train.epochs))


# ----------------------------------------------------------------------------- data

def _synthetic_source(config, workdir: str) -> tuple[str, str]:
  """The synthetic world in ``<workdir>/synthetic_world`` (or manual_dir), generated once."""
  from jreid.data import synthetic  # pylint: disable=g-import-not-at-top
  params = synthetic.WorldParams(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                    for k, v in config.data.synthetic.to_dict().items()})
  out = config.manual_dir or files.join(workdir, "synthetic_world")
  wanted = stamps.digest_of("synthetic_world", dataclasses.asdict(params))
  if sharding.is_main_process() and not stamps.is_current(workdir, "synthetic_world", wanted):
    if files.exists(files.join(out, synthetic.ROOT_NAME)):
      raise errors.InputError(
          f"{out!r} holds a synthetic world that this workdir has no record of (other "
          f"parameters, or an older jreid): use a new workdir, or delete that folder")
    start = time.time()
    synthetic.generate(out, params)
    stamps.write(workdir, "synthetic_world", wanted, params=dataclasses.asdict(params))
    logging.info("synthetic world written to %s in %.1f s", out, time.time() - start)
  return out, wanted


def _market_source(config, workdir: str) -> tuple[str, str]:
  """Market-1501 from the manual dir; the digest comes from the zip's or folder's files."""
  del workdir
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top
  manual_dir = config.manual_dir or files.join(_data_dir(config, ""), "downloads", "manual")
  return manual_dir, market1501.source_digest(manual_dir)


# Datasets by name: (config, workdir) -> (manual dir, digest of the source data).
DATASETS: dict[str, Callable[[ml_collections.ConfigDict, str], tuple[str, str]]] = {
    "synthetic": _synthetic_source,
    "market1501": _market_source,
}


def _data_dir(config, workdir: str) -> str:
  if config.data_dir:
    return config.data_dir
  if config.data.dataset == "synthetic":
    return files.join(workdir, "tfds")
  return os.path.expanduser("~/tensorflow_datasets")


def prepare_data(config: ml_collections.ConfigDict, workdir: str):
  """The prepared ``market1501`` TFDS builder and the digest of its source data.

  Process 0 generates and prepares (re-preparing when the source changed); the
  others wait, then open it.
  """
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top  (TensorFlow)
  manual_dir, source = DATASETS[config.data.dataset](config, workdir)
  data_dir = _data_dir(config, workdir)
  if sharding.is_main_process():
    market1501.prepare(data_dir, manual_dir, source_digest=source)
  sharding.sync("jreid: data prepared")
  return market1501.prepare(data_dir, manual_dir, source_digest=source), source


# ----------------------------------------------------------------------------- train

# What --config.overwrite discards: the training and the products made from it.
TRAINING_PRODUCTS = ("checkpoints", FEATURES_FILE, files.join(stamps.STAMPS_DIR, "train.json"),
                     files.join(stamps.STAMPS_DIR, "extract.json"))


def check_training_products(config, workdir: str, wanted: str) -> None:
  """Stops when the workdir holds checkpoints of other settings (or of an older jreid).

  With ``config.overwrite`` they are discarded instead.
  """
  checkpoints = files.join(workdir, "checkpoints")
  stamp = stamps.read(workdir, "train")
  stale = files.exists(checkpoints) and files.listdir(checkpoints) and (
      stamp is None or stamp.get("digest") != wanted)
  if not stale:
    return
  if config.overwrite:
    logging.warning("overwrite: discarding %s's checkpoints and features of other training "
                    "settings", workdir)
    stamps.retire(workdir, TRAINING_PRODUCTS)
    return
  changed = ""
  if stamp is not None and stamps.stamp_version(stamp) != stamps.version("train"):
    changed = (f" (by version {stamps.stamp_version(stamp)} of the train stage; this jreid's "
               f"is {stamps.version('train')})")
  elif stamp is not None and "sections" in stamp:
    now = training_sections(config)
    diffs = [f"{s}.{k}" for s in sorted(set(now) | set(stamp["sections"]))
             for k in sorted(set(now.get(s, {})) | set(stamp["sections"].get(s, {})))
             if now.get(s, {}).get(k) != stamp["sections"].get(s, {}).get(k)
             and f"{s}.{k}" != "train.epochs"]
    changed = f" (changed: {', '.join(diffs)})" if diffs else " (the data changed)"
  elif stamp is None:
    changed = " (or by an older jreid)"
  raise errors.InputError(
      f"this workdir was trained with other settings{changed}: use a new workdir or "
      f"--config.overwrite=True")


def transfer_size(config) -> tuple[int, int]:
  """(height, width) of the uint8 boxes sent to the device: config.data.transfer_size
  when set, else the synthetic world's box, else Market-1501's 128 x 64."""
  if config.data.transfer_size:
    return tuple(config.data.transfer_size)
  if config.data.dataset == "synthetic":
    return (config.data.synthetic.image_height, config.data.synthetic.image_width)
  return (128, 64)


@dataclasses.dataclass(frozen=True)
class Trained:
  """The train stage's product: the step trained to, and the model (graphdef and
  replicated state of ``train.TrainResult``), None when the features of these settings
  exist already (the model is not restored: nothing needs it)."""
  step: int
  result: Any = None


def train(config, workdir: str, builder, data_digest: str, mesh) -> Trained:
  """Trains (or resumes training of) the visual model, unless ``features.npz`` of these
  training settings exists (then the extract stage reuses it)."""
  if stamps.is_current(workdir, "extract", features_digest(config, data_digest), FEATURES_FILE):
    step = int(stamps.read(workdir, "extract").get("step", 0))
    logging.info("training: %s of these settings exists (step %d); the model is not needed",
                 files.join(workdir, FEATURES_FILE), step)
    return Trained(step)
  from jreid import train as train_lib  # pylint: disable=g-import-not-at-top
  from jreid.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  wanted = training_digest(config, data_digest)
  data = data_pipeline.TrainData(
      builder, config.train.batch_size, transfer_size(config), seed=config.train.seed,
      sampler=config.data.sampler, ids_per_batch=config.data.ids_per_batch,
      images_per_id=config.data.images_per_id, num_shards=config.data.shards,
      pk_epoch=config.data.get("pk_epoch", "images"))
  logging.info("train split: %d identities, %d images in this process (shards %s of %d), "
               "%d steps per epoch", data.num_classes, data.num_images, data.shards,
               data.num_shards, data.steps_per_epoch)
  total = train_lib.total_steps(config.train.epochs, data.steps_per_epoch)
  if total < 1:
    raise errors.InputError(
        f"train.epochs={config.train.epochs!r}: at {data.steps_per_epoch} steps per epoch "
        f"that is {total} steps; "
        f"expected at least one (train.epochs >= {1 / data.steps_per_epoch:.3g})")
  check_training_products(config, workdir, wanted)
  stamps.write(workdir, "train", wanted, num_classes=data.num_classes,
               steps_per_epoch=data.steps_per_epoch, sections=training_sections(config))
  result = train_lib.train(train_params(config), workdir, data.batches, data.num_classes,
                           data.steps_per_epoch, mesh)
  return Trained(int(result.step), result)


def extract(config, workdir: str, builder, data_digest: str, trained: Trained, mesh
            ) -> tuple[records_lib.Records, records_lib.Records]:
  """features.npz of the current training settings: reused, or extracted by the trained
  model; normalised query and gallery features (one row per image, in split order)."""
  wanted = features_digest(config, data_digest)
  path = files.join(workdir, FEATURES_FILE)
  if trained.result is None:  # the train stage found features.npz current
    logging.info("features: reusing %s", path)
    query, gallery, _ = feature_files.load_features(path)  # normalised when written
    return query, gallery
  if files.exists(path):
    logging.info("features: training settings changed since %s was written", path)
  from jreid import features as features_lib  # pylint: disable=g-import-not-at-top
  from jreid.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  result = trained.result
  step = features_lib.make_extract_step(
      result.graphdef, mesh, tuple(config.data.image_size), compiler_options(config))
  sets = []
  for split in ("query", "gallery"):
    batches, n = data_pipeline.eval_batches(builder, split, config.eval.batch_size,
                                            transfer_size(config))
    sets.append(features_lib.extract(step, result.state, batches, n,
                                     sharding.data_sharding(mesh), config.model.parts,
                                     name=f"extract {split}"))
  query, gallery = sets
  if sharding.is_main_process():
    feature_files.save_features(path, query, gallery)
  stamps.write(workdir, "extract", wanted, products=(FEATURES_FILE,), step=trained.step)
  return query, gallery


# ----------------------------------------------------------------------------- ST

def fit_st(train: records_lib.Records, num_cameras: int, config, workdir: str
           ) -> st_lib.STModel:
  """Fits the ST model on the labelled training records, or reuses the workdir's.

  Junk (-1) and distractors (0) never enter the fit; their count is reported.
  """
  labelled = train.person_ids > 0
  if not labelled.all():
    logging.warning("ST model: left out %d junk (id -1) and %d distractor (id 0) training "
                    "images", int((train.person_ids == records_lib.JUNK_ID).sum()),
                    int((train.person_ids == records_lib.DISTRACTOR_ID).sum()))
    train = train.select(labelled)
  params = st_params(config)
  wanted = stamps.digest_of("fit_st", dict(
      params=dataclasses.asdict(params), num_cameras=num_cameras, ids=train.person_ids,
      cameras=train.cameras, times=train.times))
  path = files.join(workdir, ST_MODEL_FILE)
  if stamps.is_current(workdir, "fit_st", wanted, ST_MODEL_FILE):
    logging.info("ST model: reusing %s", path)
    return st_lib.STModel.load(path)
  start = time.time()
  model = st_lib.fit(train.person_ids, train.cameras, train.times, num_cameras, params)
  logging.info("ST model: %d identities, %d camera-pair counts, %d beyond the last bin, "
               "fitted in %.2f s", model.num_identities, model.num_pair_counts,
               model.num_out_of_range, time.time() - start)
  write_st_model(model, workdir, config.st.fps)
  stamps.write(workdir, "fit_st", wanted, products=(ST_MODEL_FILE,))
  return model


def write_st_model(model: st_lib.STModel, workdir: str, ticks_per_second: float) -> None:
  """Warns of the transits the fit left out, then writes st_model.npz (main process).
  Every job that fits an ST model ends its fit with this, and draws the model with
  ``plot_st_model`` once its results are written."""
  if model.num_out_of_range:
    logging.warning("ST model: %d (identity, camera pair) transit times exceed %d bins x %s "
                    "and were left out; raise config.st.num_bins (or the bin width) to keep "
                    "them", model.num_out_of_range, model.params.num_bins,
                    st_lib.bin_text(model.params.bin_width, ticks_per_second))
  stamps.retire(workdir, (ST_PLOT_FILE,))  # the earlier model's picture
  if sharding.is_main_process():
    model.save(files.join(workdir, ST_MODEL_FILE))


def plot_st_model(model: st_lib.STModel, workdir: str, ticks_per_second: float) -> None:
  """st_distributions.png of the ST model (main process; ``plots.plot_st_distributions``)."""
  if sharding.is_main_process():
    start = time.time()
    plots.plot_st_distributions(model.table, model.params.bin_width,
                                files.join(workdir, ST_PLOT_FILE),
                                ticks_per_second=ticks_per_second, pair_counts=model.pair_counts,
                                camera_names=model.camera_names or None)
    log_written([ST_PLOT_FILE], start)


def log_written(products: list[str], start: float) -> None:
  """Logs what a stage wrote and the seconds it took (``benchmarks/eval_features.py``
  adds these up against the job's time)."""
  logging.info("wrote %s in %.2f s", ", ".join(products), time.time() - start)


# ----------------------------------------------------------------------------- evaluate

def run_info(config: ml_collections.ConfigDict) -> dict:
  """What produced a results file: the job, the digest of the whole config and jreid's
  commit (``+changes`` when the checkout has uncommitted changes; None outside git)."""
  return dict(job=config.job, config_digest=stamps.digest(config.to_dict()),
              jreid_commit=stamps.commit())


def evaluate(query: records_lib.Records, gallery: records_lib.Records, st_model: st_lib.STModel,
             config, workdir: str, writer: progress.MetricWriter | None = None,
             step: int = 0, rank_lists: bool = True
             ) -> tuple[dict, protocol.TopK | None]:
  """Every method of the config; writes results.json, cmc.json, cmc.png (and TensorBoard),
  and with ``rank_lists`` rank_lists.json: the top ``eval.top_k`` gallery items of every
  query by joint score from the evaluation's own pass, the protocol's junk left out.

  Returns:
    (the results, the top items or None without ``rank_lists``).
  """
  chosen = methods(config)
  evaluate_lib.check_inputs(query, gallery, st_model)
  # The rank lists come from the evaluation's own score tiles (every process runs the
  # same kernels; the main one writes).
  ranks, top = evaluate_lib.method_ranks(
      query, gallery, st_model.table, bin_width=st_model.params.bin_width,
      fusion=fusion_params(config), methods=chosen, rerank=rerank_params(config),
      budget_elements=config.eval.budget_elements,
      top_k=config.eval.top_k if rank_lists else 0)
  found = {m: metrics.retrieval_metrics(r, config.eval.max_rank) for m, r in ranks.items()}
  # The earlier run's evaluation files go first: none stands as this run's.
  stamps.retire(workdir, (RESULTS_FILE, CMC_FILE, CMC_PLOT_FILE) + (
      (search_lib.RANK_LISTS_FILE, RANKED_LISTS_PLOT_FILE) if rank_lists else ()))
  results = {kind: found[kind].summary() for kind in chosen}
  curves = {kind: found[kind].cmc for kind in chosen}
  if sharding.is_main_process():
    start = time.time()
    files.write_json(files.join(workdir, RESULTS_FILE), dict(results, run=run_info(config)))
    files.write_json(files.join(workdir, CMC_FILE), {k: v.tolist() for k, v in curves.items()})
    plots.plot_cmc(curves, files.join(workdir, CMC_PLOT_FILE))
    written = [RESULTS_FILE, CMC_FILE, CMC_PLOT_FILE]
    if top is not None:
      search_lib.write_rank_lists(files.join(workdir, search_lib.RANK_LISTS_FILE),
                                  search_lib.rank_lists(top, query, gallery),
                                  time_unit="frames")
      written.append(search_lib.RANK_LISTS_FILE)
    log_written(written, start)
    if writer is not None:
      writer.scalars(step, {f"eval/{kind}/{k}": r[k] for kind, r in results.items()
                            for k in ("rank1", "mAP", "mINP")})
    print(metrics.format_table(results))
  return results, top


def pictures(config, builder, query: records_lib.Records, gallery: records_lib.Records,
             top: protocol.TopK, workdir: str) -> str | None:
  """ranked_lists.png: the top gallery images (at most 10, of the evaluation's top items)
  of ``eval.ranked_list_queries`` queries spread over the query set (``search.ranked_list_picture``)."""
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top
  n = min(config.eval.ranked_list_queries, len(query))
  if n == 0 or not sharding.is_main_process():
    return None
  start = time.time()
  picks = np.linspace(0, len(query) - 1, n).astype(int)
  shown = np.unique(top.index[picks, :10][top.real[picks, :10]])
  # The picture reads images by name: each row is named "<split>/<row>".
  images = {f"query/{i}": x for i, x in market1501.decoded_images(builder, "query", picks).items()}
  images.update({f"gallery/{i}": x
                 for i, x in market1501.decoded_images(builder, "gallery", shown).items()})
  rows = lambda r, split: dataclasses.replace(
      r, names=np.asarray([f"{split}/{i}" for i in range(len(r))]))
  path = search_lib.ranked_list_picture(top, rows(query, "query"), rows(gallery, "gallery"),
                                        files.join(workdir, RANKED_LISTS_PLOT_FILE),
                                        images.__getitem__, num_queries=n, k=10)
  log_written([RANKED_LISTS_PLOT_FILE], start)
  return path


def load_features_file(path: str, num_parts: int
                       ) -> tuple[records_lib.Records, records_lib.Records]:
  """A features file as normalised query and gallery records."""
  query, gallery, _ = feature_files.load_features(path)
  return (query.with_features(scoring.l2_normalise_features(query.features, num_parts)),
          gallery.with_features(scoring.l2_normalise_features(gallery.features, num_parts)))
