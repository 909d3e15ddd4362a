"""The jobs jreid runs, and the dispatch from the config.

* ``train_and_evaluate``: data -> train -> extract -> fit ST -> evaluate -> pictures.
* ``evaluate_features``: a features file + a folder of training names -> fit ST ->
  evaluate (no training, no TensorFlow).
* ``export``: a trained workdir -> ONNX and jax.export files of the visual model.

``run`` validates the whole config (``jreid.validation``) before any data is read,
switches the persistent compilation cache on, and calls ``JOBS[config.job]``.
Adding a job is one function and one entry in ``JOBS``. Every stage's products
are cached in the workdir (``jreid.stages``).
"""

from __future__ import annotations

import os
from typing import Callable

from absl import logging
import jax
import ml_collections

from jreid import files
from jreid import names as names_lib
from jreid import progress
from jreid import sharding
from jreid import stages
from jreid import validation


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) every stage; returns the results dict (also in results.json)."""
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top  (TensorFlow)
  builder, data_digest = stages.prepare_data(config, workdir)
  mesh = sharding.make_mesh()
  query, gallery = stages.extract_or_reuse(config, workdir, builder, data_digest, mesh)
  train = market1501.split_records(builder, "train")
  num_cameras = max(train.num_cameras, query.num_cameras, gallery.num_cameras)
  st_model = stages.fit_st(train, num_cameras, config, workdir)
  writer = progress.MetricWriter(files.join(workdir, "tensorboard"))
  stamp = stages.read_stamp(workdir, "extract") or {}
  try:
    results = stages.evaluate(query, gallery, st_model, config, workdir, writer,
                              step=int(stamp.get("step", 0)))
  finally:
    writer.close()
  stages.pictures(config, builder, query, gallery, st_model, workdir)
  return results


def evaluate_features(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """A features file + training names -> ST model -> results.json (no training)."""
  query, gallery = stages.load_features_file(config.features, config.num_parts)
  listing = names_lib.list_image_folder(config.train_dir, config.grammar or None)
  if listing.skipped:
    logging.warning("%s: skipped %d entries that are not images: %s", config.train_dir,
                    len(listing.skipped), ", ".join(listing.skipped[:5]))
  logging.info("features: %d queries, %d gallery, %d dims; %d training names",
               len(query), len(gallery), query.features.shape[1], len(listing.records))
  names_lib.warn_if_test_split(listing.records, config.train_dir, logging.warning)
  num_cameras = max(listing.records.num_cameras, query.num_cameras, gallery.num_cameras)
  st_model = stages.fit_st(listing.records, num_cameras, config, workdir)
  return stages.evaluate(query, gallery, st_model, config, workdir)


def export(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The trained visual model of a workdir as ONNX and jax.export (``jreid.export``)."""
  from jreid import export as export_lib  # pylint: disable=g-import-not-at-top  (onnx)
  info = export_lib.export_workdir(config, workdir)
  logging.info("export: %s and %s (checkpoint step %d): input %s, output %s", info["onnx"],
               info["jax_export"], info["step"], info["input"], info["output"])
  return info


JOBS: dict[str, Callable[[ml_collections.ConfigDict, str], dict]] = {
    "train_and_evaluate": train_and_evaluate,
    "evaluate_features": evaluate_features,
    "export": export,
}


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
  files.makedirs(workdir)
  return JOBS[config.job](config, workdir)
