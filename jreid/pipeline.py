"""The stages of a jreid run, each writing its products to the workdir.

train -> extract -> fit ST -> evaluate. The evaluate-from-features path starts at
"fit ST" with a features file and a folder of training image names.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import ml_collections
import numpy as np

from jreid import evaluate as evaluation
from jreid import feature_files
from jreid import files
from jreid import metrics
from jreid import names as names_lib
from jreid import plots
from jreid import rerank as rerank_lib
from jreid import scoring
from jreid import st as st_lib

RESULTS_FILE = "results.json"
ST_MODEL_FILE = "st_model.npz"


def st_params(config: ml_collections.ConfigDict) -> st_lib.STParams:
  return st_lib.STParams(**config.st.to_dict())


def fusion_params(config: ml_collections.ConfigDict) -> scoring.FusionParams:
  return scoring.FusionParams(**config.fusion.to_dict())


def fit_st_stage(train: names_lib.NameTable, num_cameras: int, config, workdir: str
                 ) -> st_lib.STModel:
  """Fits (or reloads, if the workdir has one with the same constants) the ST model.

  ``train`` needs ``person_id``, ``camera`` (1-based) and ``time`` arrays.
  """
  path = files.join(workdir, ST_MODEL_FILE)
  params = st_params(config)
  if files.exists(path):
    model = st_lib.STModel.load(path)
    fingerprint = st_lib.data_fingerprint(train.person_id, train.camera - 1, train.time)
    if (model.params == params and model.num_cameras == num_cameras
        and model.fingerprint == fingerprint):
      logging.info("ST model: reusing %s", path)
      return model
    logging.info("ST model in %s has other constants or training data; fitting again", path)
  start = time.time()
  model = st_lib.fit(train.person_id, train.camera - 1, train.time, num_cameras, params)
  logging.info("ST model: %d identities, %d camera-pair counts, %d beyond the last bin, "
               "fitted in %.2f s", model.num_identities, model.num_pair_counts,
               model.num_out_of_range, time.time() - start)
  if model.num_out_of_range:
    logging.warning("ST model: %d (identity, camera pair) transit times exceed %d bins x %d "
                    "frames and were left out; raise config.st.num_bins to keep them",
                    model.num_out_of_range, params.num_bins, params.bin_width)
  if is_main_process():
    model.save(path)
    plots.plot_st_distributions(model.table, params.bin_width,
                                files.join(workdir, "st_distributions.png"))
  return model


def evaluate_stage(query: evaluation.ImageSet, gallery: evaluation.ImageSet,
                   st_model: st_lib.STModel, config, workdir: str) -> dict:
  """Evaluates visual and joint scores; writes results.json, cmc.json and cmc.png."""
  start = time.time()
  found = evaluation.evaluate(
      query, gallery, st_model.table, bin_width=st_model.params.bin_width,
      fusion=fusion_params(config), query_chunk=config.eval.query_chunk,
      chunk_elements=config.eval.chunk_elements, max_rank=config.eval.max_rank)
  logging.info("evaluate: %d queries x %d gallery in %.2f s", len(query), len(gallery),
               time.time() - start)
  if config.rerank:
    found.update(rerank_stage(query, gallery, st_model, config))
  results = {kind: m.summary() for kind, m in found.items()}
  curves = {kind: m.cmc for kind, m in found.items()}
  if is_main_process():
    files.write_json(files.join(workdir, RESULTS_FILE), results)
    files.write_json(files.join(workdir, "cmc.json"), {k: v.tolist() for k, v in curves.items()})
    plots.plot_cmc(curves, files.join(workdir, "cmc.png"))
    print(format_table(results))
  return results


def rerank_stage(query: evaluation.ImageSet, gallery: evaluation.ImageSet,
                 st_model: st_lib.STModel, config) -> dict:
  """k-reciprocal re-ranking of the visual and the joint scores -> {kind_rerank: metrics}."""
  params = rerank_lib.RerankParams(config.rerank_k1, config.rerank_k2, config.rerank_lambda)
  good, junk = evaluation.match_lists(query.person_ids, query.cameras, gallery.person_ids,
                                      gallery.cameras)
  found = {}
  for kind, table in (("visual_rerank", None), ("st_rerank", st_model.table)):
    start = time.time()
    ranks = rerank_lib.rerank_ranks(
        query, gallery, table, good, junk, params, bin_width=st_model.params.bin_width,
        fusion=fusion_params(config), chunk_elements=config.eval.chunk_elements)
    found[kind] = metrics.retrieval_metrics(ranks, config.eval.max_rank)
    logging.info("%s: %.1f s", kind, time.time() - start)
  return found


def format_table(results: dict) -> str:
  """A short text table of rank-1/5/10 and mAP (percent) per method."""
  lines = [f"{'method':<14}{'rank-1':>8}{'rank-5':>8}{'rank-10':>8}{'mAP':>8}"]
  for kind, r in results.items():
    lines.append(f"{kind:<14}" + "".join(f"{100 * r[k]:>8.2f}"
                                         for k in ("rank1", "rank5", "rank10", "mAP")))
  return "\n".join(lines)


def is_main_process() -> bool:
  """Results, plots and logs of record are written by process 0 only."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def num_cameras_of(*camera_arrays: np.ndarray) -> int:
  return int(max(int(np.max(c)) for c in camera_arrays if len(c)))


def evaluate_features_file(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The evaluate-from-features job: features file + training names -> results.json."""
  if not config.features:
    raise ValueError("config.features must name a features file (.mat or .npz)")
  if not config.train_dir:
    raise ValueError("config.train_dir must name the folder of training images "
                     "(e.g. Market-1501's bounding_box_train); only the names are read")
  query, gallery, _ = feature_files.load_features(config.features)
  listing = names_lib.list_image_folder(config.train_dir, config.grammar or None)
  if listing.skipped:
    logging.warning("%s: skipped %d entries that are not images: %s", config.train_dir,
                    len(listing.skipped), ", ".join(listing.skipped[:5]))
  logging.info("features: %d queries, %d gallery, %d dims; %d training names",
               len(query), len(gallery), query.features.shape[1], len(listing.table))
  query = dataclasses.replace(
      query, features=scoring.l2_normalise_features(query.features, config.num_parts))
  gallery = dataclasses.replace(
      gallery, features=scoring.l2_normalise_features(gallery.features, config.num_parts))
  num_cameras = num_cameras_of(listing.table.camera, query.cameras, gallery.cameras)
  st_model = fit_st_stage(listing.table, num_cameras, config, workdir)
  return evaluate_stage(query, gallery, st_model, config, workdir)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the job the config describes; returns the results dict.

  With ``config.features`` set: the evaluate-from-features job. Otherwise the whole
  pipeline train -> extract -> fit ST -> evaluate (``jreid.run_training``).
  """
  files.makedirs(workdir)
  if config.get("features"):
    return evaluate_features_file(config, workdir)
  from jreid import run_training  # pylint: disable=g-import-not-at-top  (imports TF)
  return run_training.train_and_evaluate(config, workdir)
