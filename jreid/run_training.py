"""The whole job: data -> train -> extract -> fit ST -> evaluate, each stage resumable.

A finished stage is not redone: training resumes from its latest checkpoint and
is skipped once complete; training and extraction are skipped when
``features.npz`` was written under the same training settings (a config digest);
the ST model is reused when its constants and training data match.
Imports TensorFlow (through ``jreid.data``); the evaluate-from-features job does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from PIL import Image

from jreid import evaluate as evaluation
from jreid import feature_files
from jreid import features as features_lib
from jreid import files
from jreid import names as names_lib
from jreid import pipeline
from jreid import plots
from jreid import train as train_lib
from jreid.data import market1501
from jreid.data import pipeline as data_pipeline
from jreid.data import synthetic

FEATURES_FILE = "features.npz"


def prepare_data(config: ml_collections.ConfigDict, workdir: str):
  """The prepared market1501 builder: the real data, or the synthetic world."""
  data_dir = config.data_dir or (files.join(workdir, "tfds") if config.dataset == "synthetic"
                                 else os.path.expanduser("~/tensorflow_datasets"))
  manual_dir = config.manual_dir or None
  if config.dataset == "synthetic":
    params = synthetic.WorldParams(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                      for k, v in config.synthetic.to_dict().items()})
    manual_dir = manual_dir or files.join(workdir, "synthetic_world")
    if jax.process_index() == 0:
      start = time.time()
      synthetic.generate_if_missing(manual_dir, params)
      logging.info("synthetic world ready in %s (%.1f s)", manual_dir, time.time() - start)
  elif config.dataset != "market1501":
    raise ValueError(f"config.dataset must be 'synthetic' or 'market1501', got {config.dataset!r}")
  # Process 0 prepares (generates, converts); the others wait, then open it.
  if jax.process_index() == 0:
    market1501.prepare(data_dir, manual_dir)
  multihost_utils.sync_global_devices("jreid: data prepared")
  return market1501.prepare(data_dir, manual_dir)


def transfer_size(config) -> tuple[int, int]:
  """uint8 size of the boxes sent to the device: config.transfer_size when set, else the
  synthetic world's box, else Market's 128 x 64."""
  if config.get("transfer_size"):
    return tuple(config.transfer_size)
  if config.dataset == "synthetic":
    return (config.synthetic.image_height, config.synthetic.image_width)
  return data_pipeline.TRANSFER_SIZE


def train_stage(config, workdir, builder, mesh) -> train_lib.TrainResult:
  data = data_pipeline.TrainData(
      builder, config.batch_size, transfer_size(config), seed=config.seed,
      sampler=config.sampler, ids_per_batch=config.ids_per_batch,
      images_per_id=config.images_per_id, num_shards=config.data_shards)
  logging.info("train split: %d identities, %d images in this process (shards %s of %d), "
               "%d steps per epoch", data.num_classes, data.num_images, data.shards,
               data.num_shards, data.steps_per_epoch)
  return train_lib.train(config, workdir, data.batches, data_pipeline.to_global,
                         data.num_classes, data.steps_per_epoch, mesh)


def extract_stage(config, builder, result: train_lib.TrainResult, mesh):
  """Query and gallery features (normalised) of the trained model."""
  step = features_lib.make_extract_step(result.graphdef, mesh, train_lib.data_sharding(mesh),
                                        train_lib.replicated(mesh), tuple(config.image_size))
  sets = []
  for split in ("query", "gallery"):
    start = time.time()
    batches, n = data_pipeline.eval_batches(builder, split, config.eval_batch_size,
                                            transfer_size(config))
    rec = features_lib.extract(step, result.state, batches, n, data_pipeline.to_global,
                               train_lib.data_sharding(mesh), config.model.parts,
                               log=logging.info)
    # Until the evaluation reads Records: the old ImageSet, cameras 1-based.
    sets.append(evaluation.ImageSet(features=rec.features, person_ids=rec.person_ids,
                                    cameras=rec.cameras + 1, times=rec.times))
    logging.info("extract: %s, %d images in %.1f s", split, len(sets[-1]), time.time() - start)
  return sets


def ranked_list_picture(config, builder, query, gallery, st_model, path: str) -> None:
  """Top-10 gallery images (joint score) of a few queries, framed green/red."""
  n = min(config.ranked_list_queries, len(query))
  if n == 0:
    return
  picks = np.linspace(0, len(query) - 1, n).astype(int)
  q = dataclasses.replace(query, features=query.features[picks],
                          person_ids=query.person_ids[picks], cameras=query.cameras[picks],
                          times=query.times[picks])
  top = evaluation.top_k_gallery(q, gallery, st_model.table, 10, st_model.params.bin_width,
                                 pipeline.fusion_params(config))
  q_images = data_pipeline.read_records(builder, "query")["image"]
  g_images = data_pipeline.read_records(builder, "gallery")["image"]
  decode = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
  plots.plot_ranked_lists(
      [decode(q_images[i]) for i in picks], [[decode(g_images[j]) for j in row] for row in top],
      gallery.person_ids[top] == q.person_ids[:, None], path,
      titles=[f"id {p} c{c}" for p, c in zip(q.person_ids, q.cameras)])


# Fields that do not change the trained model or its features.
_NOT_TRAINING = ("st", "fusion", "eval", "rerank", "rerank_k1", "rerank_k2", "rerank_lambda",
                 "features", "train_dir", "grammar", "ranked_list_queries", "log_every_steps",
                 "checkpoint_every_steps", "keep_checkpoints", "data_dir", "manual_dir")


def training_fingerprint(config: ml_collections.ConfigDict) -> str:
  """A digest of the config fields that shape the trained model and its features."""
  fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_TRAINING}
  return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) every stage; returns the results dict (also in results.json)."""
  builder = prepare_data(config, workdir)
  mesh = train_lib.make_mesh()
  features_path = files.join(workdir, FEATURES_FILE)
  fingerprint = training_fingerprint(config)
  reuse = False
  if files.exists(features_path):
    query, gallery, extras = feature_files.load_features(features_path)
    reuse = str(extras.get("training_fingerprint", "")) == fingerprint
    logging.info("features: %s %s", "reusing" if reuse else
                 "training settings changed since", features_path)
  if not reuse:
    result = train_stage(config, workdir, builder, mesh)
    query, gallery = extract_stage(config, builder, result, mesh)
    if pipeline.is_main_process():
      feature_files.save_features(features_path, query, gallery,
                                  training_fingerprint=np.asarray(fingerprint))
  records = data_pipeline.read_records(builder, "train")
  train_names = names_lib.NameTable(
      names=tuple(records["filename"].astype(str)), person_id=records["id"],
      camera=records["camera"], sequence=records["sequence"], frame=records["frame"],
      time=records["time"])
  num_cameras = pipeline.num_cameras_of(train_names.camera, query.cameras, gallery.cameras)
  st_model = pipeline.fit_st_stage(train_names, num_cameras, config, workdir)
  results = pipeline.evaluate_stage(query, gallery, st_model, config, workdir)
  if pipeline.is_main_process():
    ranked_list_picture(config, builder, query, gallery, st_model,
                        files.join(workdir, "ranked_lists.png"))
  return results
