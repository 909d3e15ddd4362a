"""Query x gallery evaluation in bounded memory: visual and ST-fused rankings.

Queries are processed in chunks against the whole gallery; a chunk's score
matrices ([chunk, G]) are the only quadratic arrays that ever exist, so peak
memory is O(chunk * G + G * D) however large the gallery grows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from jreid import metrics
from jreid import scoring


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """Features and metadata of one side (query or gallery).

  Attributes:
    features: float32 [N, D], already L2-normalised (``scoring.l2_normalise_features``).
    person_ids: int [N] (-1 junk, 0 distractor).
    cameras: int [N] 1-based.
    times: int [N] global frames.
  """
  features: np.ndarray
  person_ids: np.ndarray
  cameras: np.ndarray
  times: np.ndarray

  def __len__(self) -> int:
    return len(self.person_ids)


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


def auto_query_chunk(num_queries: int, gallery_size: int, chunk_elements: int) -> int:
  """Query rows per chunk so that chunk x gallery <= chunk_elements (a multiple of 8)."""
  rows = max(1, chunk_elements // max(1, gallery_size))
  if rows >= 8:
    rows -= rows % 8
  return max(1, min(rows, num_queries))


def pad_rows(x: np.ndarray, rows: int, value) -> np.ndarray:
  """x [n, ...] padded with ``value`` to [rows, ...] (one shape for every chunk)."""
  x = np.asarray(x)
  if len(x) == rows:
    return x
  pad = np.full((rows - len(x),) + x.shape[1:], value, dtype=x.dtype)
  return np.concatenate([x, pad])


def evaluate(query: ImageSet, gallery: ImageSet, st_table: np.ndarray | None = None,
             bin_width: int = 100, fusion: scoring.FusionParams = scoring.FusionParams(),
             query_chunk: int = 0, chunk_elements: int = 1 << 22, max_rank: int = 100,
             log_every_s: float = 10.0) -> dict[str, metrics.RetrievalMetrics]:
  """Visual and (with an ST table) joint-score metrics over the whole gallery.

  Args:
    query, gallery: the two sides, features normalised.
    st_table: float [C, C, H] ST probabilities (0-based cameras), or None.
    bin_width: frames per ST bin.
    fusion: logistic smoothing constants.
    query_chunk: queries per chunk; 0 picks one from ``chunk_elements``.
    chunk_elements: bound on chunk x gallery when query_chunk is 0.
    max_rank: length of the CMC curves.
  Returns:
    {"visual": metrics} and, with st_table, {"st": metrics}.
  """
  Q, G = len(query), len(gallery)
  if query.features.shape[1] != gallery.features.shape[1]:
    raise ValueError(f"query features have {query.features.shape[1]} dims but gallery "
                     f"features {gallery.features.shape[1]}")
  good_index, junk_index = match_lists(query.person_ids, query.cameras,
                                       gallery.person_ids, gallery.cameras)
  chunk = query_chunk or auto_query_chunk(Q, G, chunk_elements)
  # device_put aliases a 64-byte-aligned float32 host array on CPU (no second copy).
  gallery_features = jax.device_put(np.asarray(gallery.features, np.float32))
  gallery_cameras = jnp.asarray(gallery.cameras - 1, jnp.int32)
  gallery_times = jnp.asarray(gallery.times, jnp.int32)
  global_junk = jnp.asarray(gallery.person_ids == -1)
  table = None if st_table is None else jnp.asarray(st_table, jnp.float32)
  kinds = ["visual"] + (["st"] if table is not None else [])
  ranks = np.empty((len(kinds), Q, good_index.shape[1]), np.int64)
  start_time, last_log = time.time(), time.time()
  for start in range(0, Q, chunk):
    stop = min(Q, start + chunk)
    rows = lambda x, v: pad_rows(x[start:stop], chunk, v)
    out = _chunk_ranks(
        jnp.asarray(rows(query.features, 0.0), jnp.float32),
        jnp.asarray(rows(query.cameras - 1, 0), jnp.int32),
        jnp.asarray(rows(query.times, 0), jnp.int32),
        gallery_features, gallery_cameras, gallery_times, global_junk,
        jnp.asarray(rows(good_index, -1)), jnp.asarray(rows(junk_index, -1)),
        table, bin_width=int(bin_width), fusion=fusion)
    ranks[:, start:stop] = np.asarray(out)[:, :stop - start]
    if time.time() - last_log > log_every_s and stop < Q:
      rate = stop / (time.time() - start_time)
      logging.info("evaluate: %d/%d queries, %.0f queries/s, ETA %.0f s", stop, Q, rate,
                   (Q - stop) / rate)
      last_log = time.time()
  return {kind: metrics.retrieval_metrics(ranks[i], max_rank) for i, kind in enumerate(kinds)}


def top_k_gallery(query: ImageSet, gallery: ImageSet, st_table: np.ndarray | None, k: int = 10,
                  bin_width: int = 100, fusion: scoring.FusionParams = scoring.FusionParams()
                  ) -> np.ndarray:
  """int [Q, k]: the best k gallery indices per query after junk removal (joint score if
  st_table is given, else visual). For ranked-list pictures of a few queries."""
  good, junk = match_lists(query.person_ids, query.cameras, gallery.person_ids, gallery.cameras)
  scores = scoring.fused_scores(
      scoring.cosine_scores(jnp.asarray(query.features), jnp.asarray(gallery.features)),
      None if st_table is None else jnp.asarray(st_table, jnp.float32), bin_width, fusion,
      jnp.asarray(query.cameras - 1, jnp.int32), jnp.asarray(query.times, jnp.int32),
      jnp.asarray(gallery.cameras - 1, jnp.int32), jnp.asarray(gallery.times, jnp.int32))
  scores = np.array(scores)
  scores[:, gallery.person_ids == -1] = -np.inf
  rows = np.repeat(np.arange(len(query)), junk.shape[1])
  cols = junk.reshape(-1)
  scores[rows[cols >= 0], cols[cols >= 0]] = -np.inf
  return np.argsort(-scores, axis=1, kind="stable")[:, :k]
