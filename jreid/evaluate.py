"""Query x gallery evaluation in bounded memory: visual and ST-fused rankings.

Queries are processed in chunks against the whole gallery; a chunk's score
matrices ([chunk, G]) are the only quadratic arrays that ever exist, so peak
memory is O(chunk * G + G * D) however large the gallery grows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jreid import metrics
from jreid import progress
from jreid import records as records_lib
from jreid import scoring
from jreid.records import Records


@dataclasses.dataclass(frozen=True)
class Method:
  """An evaluation method: which score ranks the gallery, and whether it is re-ranked."""
  st: bool
  rerank: bool


# Evaluation methods by name (config.eval.methods chooses among them).
METHODS: dict[str, Method] = {
    "visual": Method(st=False, rerank=False),
    "st": Method(st=True, rerank=False),
    "visual_rerank": Method(st=False, rerank=True),
    "st_rerank": Method(st=True, rerank=True),
}


def match_lists(query_ids: np.ndarray, query_cameras: np.ndarray, gallery_ids: np.ndarray,
                gallery_cameras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per query, the gallery indices of its good and of its same-id junk items.

  Returns:
    (good_index, junk_index), int32 [Q, K] each, K the largest number of gallery
    images of one query identity; -1 pads. good: same id, other camera, id != -1;
    junk: same id and same camera (id -1 is junk for every query, handled apart).
  """
  order = np.argsort(gallery_ids, kind="stable")
  sorted_ids = gallery_ids[order]
  lo = np.searchsorted(sorted_ids, query_ids, side="left")
  hi = np.searchsorted(sorted_ids, query_ids, side="right")
  K = max(1, int((hi - lo).max())) if len(query_ids) else 1
  pos = lo[:, None] + np.arange(K)[None, :]
  valid = pos < hi[:, None]
  cand = order[np.minimum(pos, len(order) - 1)] if len(order) else np.zeros_like(pos)
  same_cam = gallery_cameras[cand] == query_cameras[:, None]
  good = valid & ~same_cam & (gallery_ids[cand] != -1)
  junk = valid & same_cam
  return (np.where(good, cand, -1).astype(np.int32), np.where(junk, cand, -1).astype(np.int32))


@functools.partial(jax.jit, static_argnames=("bin_width", "fusion"))
def _chunk_ranks(query_features, query_cameras, query_times, gallery_features,
                 gallery_cameras, gallery_times, global_junk, good_index, junk_index,
                 st_table, *, bin_width, fusion):
  """Good-item ranks [kinds, chunk, K] for visual (and joint when st_table is given)."""
  visual = scoring.cosine_scores(query_features, gallery_features)
  ranks = [metrics.good_item_ranks(visual, good_index, junk_index, global_junk)]
  if st_table is not None:
    joint = scoring.fused_scores(visual, st_table, bin_width, fusion, query_cameras,
                                 query_times, gallery_cameras, gallery_times)
    ranks.append(metrics.good_item_ranks(joint, good_index, junk_index, global_junk))
  return jnp.stack(ranks)


def _ranks(query: Records, gallery: Records, st_table: np.ndarray | None, bin_width: int,
           fusion: scoring.FusionParams, budget_elements: int) -> np.ndarray:
  """Good-item ranks [kinds, Q, K]: visual, and joint when st_table is given."""
  Q, G = len(query), len(gallery)
  good_index, junk_index = match_lists(query.person_ids, query.cameras,
                                       gallery.person_ids, gallery.cameras)
  chunk = records_lib.chunk_rows(Q, G, budget_elements)
  # device_put aliases a 64-byte-aligned float32 host array on CPU (no second copy).
  gallery_features = jax.device_put(np.asarray(gallery.features, np.float32))
  gallery_cameras = jnp.asarray(gallery.cameras, jnp.int32)
  gallery_times = jnp.asarray(gallery.times, jnp.int32)
  global_junk = jnp.asarray(gallery.person_ids == -1)
  table = None if st_table is None else jnp.asarray(st_table, jnp.float32)
  kinds = 1 + (table is not None)
  ranks = np.empty((kinds, Q, good_index.shape[1]), np.int64)
  meter = progress.Progress("evaluate", Q, unit="queries")
  for start in range(0, Q, chunk):
    stop = min(Q, start + chunk)
    rows = lambda x, v: records_lib.pad_rows(x[start:stop], chunk, v)
    out = _chunk_ranks(
        jnp.asarray(rows(query.features, 0.0), jnp.float32),
        jnp.asarray(rows(query.cameras, 0), jnp.int32),
        jnp.asarray(rows(query.times, 0), jnp.int32),
        gallery_features, gallery_cameras, gallery_times, global_junk,
        jnp.asarray(rows(good_index, -1)), jnp.asarray(rows(junk_index, -1)),
        table, bin_width=int(bin_width), fusion=fusion)
    ranks[:, start:stop] = np.asarray(out)[:, :stop - start]
    meter.update(stop)
  meter.finish()
  return ranks


def evaluate(query: Records, gallery: Records, st_table: np.ndarray | None, *,
             bin_width: int = 100, fusion: scoring.FusionParams = scoring.FusionParams(),
             methods: Sequence[str] = ("visual", "st"), rerank=None,
             budget_elements: int = 1 << 22, max_rank: int = 100
             ) -> dict[str, metrics.RetrievalMetrics]:
  """Metrics of each method in ``methods`` (names of ``METHODS``) over the whole gallery.

  Args:
    query, gallery: records with L2-normalised features, cameras 0-based.
    st_table: float [C, C, H] ST probabilities (0-based cameras); needed by ST methods.
    bin_width: time ticks per ST bin.
    fusion: logistic smoothing constants.
    rerank: ``rerank.RerankParams`` for the *_rerank methods.
    budget_elements: bound on every score block (rows x columns).
    max_rank: length of the CMC curves.
  """
  from jreid import rerank as rerank_lib  # pylint: disable=g-import-not-at-top
  if query.features.shape[1] != gallery.features.shape[1]:
    raise ValueError(f"query features have {query.features.shape[1]} dims but gallery "
                     f"features {gallery.features.shape[1]}")
  out = {}
  plain = [m for m in methods if not METHODS[m].rerank]
  if plain:
    use_st = any(METHODS[m].st for m in plain)
    ranks = _ranks(query, gallery, st_table if use_st else None, bin_width, fusion,
                   budget_elements)
    for m in plain:
      out[m] = metrics.retrieval_metrics(ranks[1 if METHODS[m].st else 0], max_rank)
  good, junk = match_lists(query.person_ids, query.cameras, gallery.person_ids,
                           gallery.cameras)
  for m in methods:
    if METHODS[m].rerank:
      ranks = rerank_lib.rerank_ranks(
          query, gallery, st_table if METHODS[m].st else None, good, junk,
          rerank or rerank_lib.RerankParams(), bin_width=bin_width, fusion=fusion,
          chunk_elements=budget_elements)
      out[m] = metrics.retrieval_metrics(ranks, max_rank)
  return {m: out[m] for m in methods}


def top_k_gallery(query: Records, gallery: Records, st_table: np.ndarray | None, k: int = 10,
                  bin_width: int = 100, fusion: scoring.FusionParams = scoring.FusionParams()
                  ) -> np.ndarray:
  """int [Q, k]: the best k gallery indices per query after junk removal (joint score if
  st_table is given, else visual). For ranked-list pictures of a few queries."""
  good, junk = match_lists(query.person_ids, query.cameras, gallery.person_ids, gallery.cameras)
  scores = scoring.fused_scores(
      scoring.cosine_scores(jnp.asarray(query.features), jnp.asarray(gallery.features)),
      None if st_table is None else jnp.asarray(st_table, jnp.float32), bin_width, fusion,
      jnp.asarray(query.cameras, jnp.int32), jnp.asarray(query.times, jnp.int32),
      jnp.asarray(gallery.cameras, jnp.int32), jnp.asarray(gallery.times, jnp.int32))
  scores = np.array(scores)
  scores[:, gallery.person_ids == -1] = -np.inf
  rows = np.repeat(np.arange(len(query)), junk.shape[1])
  cols = junk.reshape(-1)
  scores[rows[cols >= 0], cols[cols >= 0]] = -np.inf
  return np.argsort(-scores, axis=1, kind="stable")[:, :k]
