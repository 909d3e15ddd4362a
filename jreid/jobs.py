"""The jobs jreid runs, and the dispatch from the config.

* ``train_and_evaluate``: data -> train -> extract -> fit ST -> evaluate -> pictures.
* ``evaluate_features``: a features file + a folder of training names -> fit ST ->
  evaluate (no training, no TensorFlow).
* ``export``: a trained workdir -> ONNX and jax.export files of the visual model.
* ``search``: tracks tables (any camera network) + features (a file, or extracted by
  a trained workdir) -> ST model -> top-k of every query (``rank_lists.json``).
* ``extract``: features of a tracks table's or an image folder's images by a trained
  workdir's model -> a features file.

``run`` validates the whole config (``jreid.validation``) before any data is read,
switches the persistent compilation cache on, and calls ``JOBS[config.job]``.
Adding a job is one function and one entry in ``JOBS``. Every stage's products
are cached in the workdir (``jreid.stages``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import ml_collections
import numpy as np

from jreid import errors
from jreid import feature_files
from jreid import files
from jreid import names as names_lib
from jreid import progress
from jreid import protocol
from jreid import records as records_lib
from jreid import scoring
from jreid import search as search_lib
from jreid import sharding
from jreid import st as st_lib
from jreid import stages
from jreid import stamps
from jreid import tracks
from jreid import validation


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes, or reuses) every stage; returns the results (also in results.json)."""
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top  (TensorFlow)
  builder, data_digest = stages.prepare_data(config, workdir)
  splits = builder.info.splits
  stages.check_rerank_sizes(config, splits["query"].num_examples + splits["gallery"].num_examples)
  mesh = sharding.make_mesh()
  trained = stages.train(config, workdir, builder, data_digest, mesh)
  query, gallery = stages.extract(config, workdir, builder, data_digest, trained, mesh)
  # File names for rank_lists.json (features are in split order).
  query, gallery = (dataclasses.replace(r, names=market1501.split_records(builder, s).names)
                    for r, s in ((query, "query"), (gallery, "gallery")))
  train = market1501.split_records(builder, "train")
  num_cameras = max(train.num_cameras, query.num_cameras, gallery.num_cameras)
  st_model = stages.fit_st(train, num_cameras, config, workdir)
  writer = progress.MetricWriter(files.join(workdir, "tensorboard"))
  try:
    results, top = stages.evaluate(query, gallery, st_model, config, workdir, writer,
                                   step=trained.step)
  finally:
    writer.close()
  stages.pictures(config, builder, query, gallery, top, workdir)
  stages.plot_st_model(st_model, workdir, config.st.fps)
  return results


def evaluate_features(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """A features file + training names -> ST model -> results.json (no training)."""
  query, gallery = stages.load_features_file(config.features, config.num_parts)
  stages.check_rerank_sizes(config, len(query) + len(gallery))
  listing = names_lib.list_image_folder(config.train_dir, config.grammar or None)
  if listing.skipped:
    logging.warning("%s: skipped %d entries that are not images: %s", config.train_dir,
                    len(listing.skipped), ", ".join(listing.skipped[:5]))
  logging.info("features: %d queries, %d gallery, %d dims; %d training names",
               len(query), len(gallery), query.features.shape[1], len(listing.records))
  names_lib.warn_if_test_split(listing.records, config.train_dir, logging.warning)
  num_cameras = max(listing.records.num_cameras, query.num_cameras, gallery.num_cameras)
  st_model = stages.fit_st(listing.records, num_cameras, config, workdir)
  results = stages.evaluate(query, gallery, st_model, config, workdir)[0]
  stages.plot_st_model(st_model, workdir, config.st.fps)
  return results


def search(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Tracks tables -> ST model (fitted or loaded) -> top-k of every query -> rank_lists.json,
  ranked_lists.png; with labelled query and gallery also results.json (docs/cameras.md)."""
  model = search_st_model(config, workdir)
  sides = search_sides(config, model)
  if sides.labelled:  # only then does it evaluate (and re-rank)
    stages.check_rerank_sizes(config, len(sides.query) + len(sides.gallery))
  query, gallery = search_features(config, sides)
  top = search_top_k(config, query, gallery, model)
  summary = write_search(config, workdir, sides, query, gallery, top, model)
  if sides.labelled:
    summary["results"], _ = stages.evaluate(query, gallery, model, config, workdir,
                                            rank_lists=False)
  search_pictures(config, workdir, sides, query, gallery, top)
  if not config.st_model:  # a model fitted here
    stages.plot_st_model(model, workdir, model.ticks_per_second)
  return summary


def _same_file(a: str, b: str) -> bool:
  local = lambda p: os.path.realpath(p) if "://" not in p else p
  return local(a) == local(b)


class SearchSides(NamedTuple):
  """The query and gallery of a search: their table rows and records (on one time base,
  cameras mapped by name), the camera names and the time base."""
  query_rows: tracks.Table
  gallery_rows: tracks.Table
  query: records_lib.Records
  gallery: records_lib.Records
  names: tuple[str, ...]
  base: tracks.TimeBase

  @property
  def labelled(self) -> bool:
    return self.query_rows.labelled and self.gallery_rows.labelled


def search_st_model(config: ml_collections.ConfigDict, workdir: str) -> st_lib.STModel:
  """The search's ST model: a saved one with camera names (``config.st_model``), or fitted
  from the labelled training tracks and written to the workdir."""
  if config.st_model:
    model = st_lib.STModel.load(config.st_model)
    if not model.camera_names or model.ticks_per_second != tracks.TICKS_PER_SECOND:
      raise errors.InputError(f"{config.st_model}: not fitted from a tracks table (no camera "
                              f"names, times not in milliseconds); fit one with tracks.train")
    if not _same_file(config.st_model, files.join(workdir, stages.ST_MODEL_FILE)):
      stamps.retire(workdir, (stages.ST_MODEL_FILE, stages.ST_PLOT_FILE))  # not this run's
    logging.info("ST model: %s, cameras %s, bins of %g s", config.st_model,
                 list(model.camera_names), model.bin_seconds)
    return model
  t = config.tracks  # validation.py checked the fields
  params = st_lib.STParams(bin_width=tracks.bin_width_ticks(config.st.bin_seconds),
                           num_bins=config.st.num_bins, sigma=config.st.sigma,
                           truncate=config.st.truncate, eps=config.st.eps)
  fitted = search_lib.fit_st_from_table(
      tracks.read_table(t.train, tracks.parse_fps(t.fps), check_images=False,
                        require_labels=True), params)
  model = fitted.model
  if fitted.num_junk or fitted.num_distractors:
    logging.warning("ST model: left out %d junk (id -1) and %d distractor (id 0) training "
                    "rows of %s", fitted.num_junk, fitted.num_distractors, t.train)
  logging.info("ST model: %d identities, %d camera-pair transits, cameras %s, bins of %g s",
               model.num_identities, model.num_pair_counts, list(model.camera_names),
               model.bin_seconds)
  stages.write_st_model(model, workdir, model.ticks_per_second)
  return model


def search_sides(config: ml_collections.ConfigDict, model: st_lib.STModel) -> SearchSides:
  """The query and gallery rows of the tables (one table with a split column, or two),
  on one time base, with the ST model's cameras first; warns of cameras it never saw."""
  t = config.tracks
  fps = tracks.parse_fps(t.fps)
  with_images = bool(config.trained_workdir)
  first = tracks.read_table(t.query, fps, check_images=with_images)
  if t.gallery:
    second = tracks.read_table(t.gallery, fps, check_images=with_images)
    q_rows = first.split("query") if first.splits is not None else first
    g_rows = second.split("gallery") if second.splits is not None else second
  else:
    q_rows, g_rows = first.split("query"), first.split("gallery")
  for side, rows in (("query", q_rows), ("gallery", g_rows)):
    if not len(rows):
      raise errors.InputError(f"search: no {side} rows in {rows.path}")
  base = tracks.time_base(q_rows, g_rows)
  names = tracks.camera_names(q_rows, g_rows, known=model.camera_names)
  query = tracks.to_records(q_rows, names, base)
  gallery = tracks.to_records(g_rows, names, base)
  for side, r in (("query", query), ("gallery", gallery)):
    unseen = tracks.unseen_cameras(r, names, model.num_cameras)
    if unseen:
      logging.warning("search: %d %s detections come from cameras the ST model has never seen "
                      "(%s): their ST probability is 0 for every pair, so only their visual "
                      "score ranks them", sum(unseen.values()), side,
                      ", ".join(f"{k}: {v}" for k, v in unseen.items()))
  return SearchSides(q_rows, g_rows, query, gallery, names, base)


def search_features(config: ml_collections.ConfigDict, sides: SearchSides
                    ) -> tuple[records_lib.Records, records_lib.Records]:
  """The sides' records with normalised features: from a features file (matched to the
  rows by image name or order), or extracted by a trained workdir's model."""
  if not config.features:
    return extract_images(config, sides.query, sides.gallery)
  q_file, g_file, extras = feature_files.load_features(config.features)
  for side, rows in (("query", sides.query_rows), ("gallery", sides.gallery_rows)):
    if rows.images is None and extras.get(f"{side}_names") is not None:
      raise errors.InputError(
          f"{rows.path}: no image column, so its {side} rows cannot be matched to the named "
          f"features of {config.features} ({side}_names); add the image column, or use a "
          f"features file without names (then rows and features are matched by order)")
  parts = config.num_parts
  query = search_lib.attach_features(
      sides.query, scoring.l2_normalise_features(q_file.features, parts),
      extras.get("query_names"), f"{config.features} (query_f)",
      q_file.person_ids if sides.query_rows.labelled else None)
  gallery = search_lib.attach_features(
      sides.gallery, scoring.l2_normalise_features(g_file.features, parts),
      extras.get("gallery_names"), f"{config.features} (gallery_f)",
      g_file.person_ids if sides.gallery_rows.labelled else None)
  return query, gallery


def search_top_k(config: ml_collections.ConfigDict, query: records_lib.Records,
                 gallery: records_lib.Records, model: st_lib.STModel) -> protocol.TopK:
  """Every query's ``eval.top_k`` gallery items by joint score, with progress; warns of
  the pairs beyond the ST table's last bin."""
  meter = progress.Progress("search", len(query), unit="queries")
  top = search_lib.top_k(query, gallery, model, stages.fusion_params(config), config.eval.top_k,
                         config.eval.budget_elements, progress=meter.update)
  meter.finish()
  if top.num_beyond_last_bin:
    logging.warning("search: %d of the %d query/gallery pairs (%.2f%%) join two different "
                    "cameras further apart in time than the ST table's last bin (%d bins x "
                    "%s): their ST probability is 0", top.num_beyond_last_bin, top.num_pairs,
                    100.0 * top.num_beyond_last_bin / top.num_pairs, model.params.num_bins,
                    st_lib.bin_text(model.params.bin_width, model.ticks_per_second))
  return top


def write_search(config: ml_collections.ConfigDict, workdir: str, sides: SearchSides,
                 query: records_lib.Records, gallery: records_lib.Records,
                 top: protocol.TopK, model: st_lib.STModel) -> dict:
  """rank_lists.json (main process); returns the summary (with labels: how often the
  true match comes first)."""
  summary = dict(queries=len(query), gallery=len(gallery), k=int(top.index.shape[1]),
                 ranked_by=top.ranked_by, pairs_beyond_last_bin=top.num_beyond_last_bin)
  if sides.labelled:
    summary["true_match_first"] = float(search_lib.matches(top, query, gallery)[:, 0].mean())
  stamps.retire(workdir, stages.EVALUATION_FILES)  # an unlabelled search evaluates nothing
  if not sharding.is_main_process():
    return summary
  names, base = sides.names, sides.base
  start = time.time()
  lists = search_lib.rank_lists(top, query, gallery, names, base.format, sides.labelled)
  path = search_lib.write_rank_lists(
      files.join(workdir, search_lib.RANK_LISTS_FILE), lists, camera_names=list(names),
      time=dict(base.to_dict(), unit="ISO-8601 (UTC)" if base.form == "iso" else "seconds"),
      st_model=dict(bin_seconds=model.bin_seconds, num_bins=model.params.num_bins),
      summary=summary)
  stages.log_written([search_lib.RANK_LISTS_FILE], start)
  logging.info("search: %s holds the top-%d of %d queries", path, summary["k"], len(query))
  return summary


def search_pictures(config: ml_collections.ConfigDict, workdir: str, sides: SearchSides,
                    query: records_lib.Records, gallery: records_lib.Records,
                    top: protocol.TopK) -> None:
  """ranked_lists.png when the tables name images (main process), drawn after the
  results; an image that cannot be read is reported and the picture left out."""
  if (not sharding.is_main_process() or sides.query_rows.images is None
      or sides.gallery_rows.images is None):
    return
  start = time.time()
  try:
    search_lib.ranked_list_picture(
        top, query, gallery, files.join(workdir, stages.RANKED_LISTS_PLOT_FILE),
        search_lib.load_rgb, sides.names, config.eval.ranked_list_queries, 10, sides.labelled,
        sides.base.format)
    stages.log_written([stages.RANKED_LISTS_PLOT_FILE], start)
  except (FileNotFoundError, errors.InputError) as e:
    logging.warning("search: no ranked_lists.png: %s", e)


def restore_trained(trained_dir: str, mesh) -> tuple[ml_collections.ConfigDict, Any, Any, int]:
  """A trained workdir's training settings (its ``stages/train.json``) and latest checkpoint.

  Returns (the training config sections, graphdef, replicated state, checkpoint step).
  """
  from jreid import train as train_lib  # pylint: disable=g-import-not-at-top
  stamp = stamps.read(trained_dir, "train")
  if not stamp or "sections" not in stamp:
    raise errors.InputError(f"{trained_dir}: no stages/train.json; expected the workdir of a "
                            f"jreid training run (the main job)")
  if "num_classes" not in stamp:
    raise errors.InputError(f"{trained_dir}: stages/train.json lacks num_classes (written by "
                            f"an older jreid): train again in a new workdir")
  trained = ml_collections.ConfigDict(stamp["sections"])
  # The optimiser's state has the same shapes for any schedule length: stamps without
  # steps_per_epoch restore with one.
  try:
    result = train_lib.restore_trained(trained_dir, stages.train_params(trained),
                                       int(stamp["num_classes"]),
                                       int(stamp.get("steps_per_epoch", 1)), mesh)
  except FileNotFoundError as e:
    raise errors.InputError(str(e)) from None
  return trained, result.graphdef, result.state, result.step


def extract_images(config: ml_collections.ConfigDict, query: records_lib.Records,
                   gallery: records_lib.Records) -> tuple[records_lib.Records, records_lib.Records]:
  """query and gallery (``names``: image paths) with the normalised features of the model
  trained in ``config.trained_workdir`` (its latest checkpoint and the training settings
  of its ``stages/train.json``), extracted as the training job does, sharded over devices."""
  from jreid import features as features_lib  # pylint: disable=g-import-not-at-top
  from jreid.data import image_files  # pylint: disable=g-import-not-at-top  (TensorFlow)
  trained_dir = config.trained_workdir
  mesh = sharding.make_mesh()
  trained, graphdef, state, step = restore_trained(trained_dir, mesh)
  logging.info("extract: the model of %s (step %d)", trained_dir, step)
  extract_step = features_lib.make_extract_step(
      graphdef, mesh, tuple(trained.data.image_size), stages.compiler_options(trained))
  out = []
  for side, rows in (("query", query), ("gallery", gallery)):
    batches, n = image_files.batches([str(p) for p in rows.names], config.eval.batch_size,
                                     stages.transfer_size(trained))
    found = features_lib.extract(extract_step, state, batches, n, sharding.data_sharding(mesh),
                                 trained.model.parts, name=f"extract {side}")
    out.append(rows.with_features(found.features))
  return out[0], out[1]


def extract(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Features of a tracks table's (or an image folder's) images by a trained workdir's model
  -> ``features.npz`` (the features-file format, image paths as ``*_names``)."""
  t = config.tracks  # validation.py checked the fields
  fps = tracks.parse_fps(t.fps)
  sources = {}
  for side, source in (("query", t.query), ("gallery", t.gallery or t.query)):
    if files.isdir(source):
      sources[side] = tracks.folder_records(source)
    else:
      table = tracks.read_table(source, fps, check_images=True)
      sources[side] = table.split(side) if table.splits is not None else table
      if not len(sources[side]):
        raise errors.InputError(f"extract: no {side} rows in {source} (its split column "
                                f"names no '{side}' row); expected at least one")
  tables = [v for v in sources.values() if isinstance(v, tracks.Table)]
  names = tracks.camera_names(*tables) if tables else ()
  base = tracks.time_base(*tables) if tables else None
  sides = [tracks.to_records(v, names, base) if isinstance(v, tracks.Table) else v
           for v in (sources["query"], sources["gallery"])]
  stamps.retire(workdir, (stages.FEATURES_FILE,))  # an earlier run's: not this one's
  query, gallery = extract_images(config, *sides)
  path = files.join(workdir, stages.FEATURES_FILE)
  if sharding.is_main_process():
    feature_files.save_features(path, query, gallery, query_names=query.names,
                                gallery_names=gallery.names,
                                camera_names=np.asarray(list(names) or [""]))
  # The file's stamp: the run that wrote it (job, config digest, commit) and its content.
  info = stages.run_info(config)
  stamps.write(workdir, "extract", info["config_digest"], products=(stages.FEATURES_FILE,),
               run=info, trained_workdir=str(config.trained_workdir))
  logging.info("extract: wrote %s (%d query, %d gallery images, %d dims)", path, len(query),
               len(gallery), query.features.shape[1])
  return dict(features=path, queries=len(query), gallery=len(gallery),
              dims=int(query.features.shape[1]))


def export(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The trained visual model of a workdir as ONNX and jax.export files (``jreid.export``)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jreid import export as export_lib  # pylint: disable=g-import-not-at-top  (onnx)
  del config  # the model and its input size are the training run's (stages/train.json)
  trained, graphdef, state, step = restore_trained(workdir, sharding.make_mesh())
  model = nnx.merge(graphdef, jax.device_get(state))["model"]
  info = export_lib.write_exports(model, stages.transfer_size(trained),
                                  tuple(trained.data.image_size), files.join(workdir, "export"),
                                  step)
  logging.info("export: %s and %s (checkpoint step %d): input %s, output %s", info["onnx"],
               info["jax_export"], info["step"], info["input"], info["output"])
  return info


JOBS: dict[str, Callable[[ml_collections.ConfigDict, str], dict]] = {
    "train_and_evaluate": train_and_evaluate,
    "evaluate_features": evaluate_features,
    "search": search,
    "extract": extract,
    "export": export,
}


# Jobs that add to another job's workdir: export writes export/ into a trained workdir.
WORKDIR_OF = {"export": "train_and_evaluate"}
# The job of a workdir without a job record, by its stamps (the first found).
STAMP_OWNERS = (("train", "train_and_evaluate"), ("fit_st", "evaluate_features"))

COMPILATION_CACHE_BYTES = 4 << 30  # least recently used entries go beyond this


def enable_compilation_cache(cache_dir: str) -> str | None:
  """JAX's persistent compilation cache in ``cache_dir``; returns it (None when off).

  "default" is ``$XDG_CACHE_HOME/jreid/xla`` (``~/.cache/jreid/xla``). A second run of
  any job then loads its compiled programs instead of compiling them. Programs that
  compile in under 0.2 s are not stored. Safe with several processes, on one host or
  sharing a folder: with a size bound JAX takes a file lock (the ``filelock``
  package) around every read and write, so no process reads a half-written entry;
  without ``filelock`` each process gets a folder of its own.
  """
  if not cache_dir:
    return None
  if cache_dir == "default":
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cache_dir = os.path.join(base, "jreid", "xla")
  try:
    import filelock  # pylint: disable=g-import-not-at-top,unused-import
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
  except ImportError:
    if jax.process_count() > 1:
      cache_dir = os.path.join(cache_dir, f"process_{jax.process_index()}")
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return cache_dir


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Validates the config, then runs ``JOBS[config.job]``; returns its results."""
  validation.validate(config, jax.device_count(), jax.process_count(), tuple(JOBS))
  cache = enable_compilation_cache(config.get("compilation_cache_dir", ""))
  if cache:
    logging.info("compilation cache: %s", cache)
  if files.exists(workdir) and not files.isdir(workdir):
    raise errors.InputError(f"workdir {workdir} is a file: expected a folder (or a new path)")
  try:
    files.makedirs(workdir)
  except OSError as e:
    raise errors.InputError(f"workdir {workdir} cannot be created: "
                            f"{e.strerror or e}") from None
  stamps.claim(workdir, WORKDIR_OF.get(config.job, config.job), stages.PRODUCTS,
               STAMP_OWNERS, record=config.job not in WORKDIR_OF)
  return JOBS[config.job](config, workdir)
