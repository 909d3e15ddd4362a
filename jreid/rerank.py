"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in bounded memory.

The published algorithm (``ST_REID_REFERENCE.md`` section 5) builds the dense
(Q+G) x (Q+G) distance matrix. Only three things of it are ever used:

1. each item's k1 + 1 nearest neighbours (and its row maximum, for the column
   normalisation), found here by a jitted pass over row chunks with ``lax.top_k``;
2. the distances to the items of each k-reciprocal expansion set (a few dozen per
   item), recomputed pair by pair;
3. the query x gallery block, recomputed chunk by chunk at the end.

The k-reciprocal sets, the weights V, the query expansion (k2) and the Jaccard
distance are sparse: ``scipy.sparse`` matrices with O((Q+G) * k1^2) entries.

Distances: d(i, j) = 2 - 2 * score(i, j), with score the joint ST score (or the
visual cosine), symmetric in (i, j); the reference's column normalisation then
makes row i of the normalised matrix d(i, .) / max_j d(i, j). Ties between equal
distances go to the lower index, as a stable argsort would.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from jreid import metrics
from jreid import scoring
from jreid import records as records_lib
from jreid.records import Records
from jreid.records import pad_rows


@dataclasses.dataclass(frozen=True)
class RerankParams:
  """k1: neighbourhood size; k2: query expansion; lambda_value: weight of the original distance."""
  k1: int = 20
  k2: int = 6
  lambda_value: float = 0.3

  def __post_init__(self):
    if self.k1 < 1 or self.k2 < 1:
      raise ValueError(f"k1 and k2 must be >= 1, got k1={self.k1}, k2={self.k2}")
    if not 0.0 <= self.lambda_value <= 1.0:
      raise ValueError(f"lambda_value must be in [0, 1], got {self.lambda_value}")


class _Items(NamedTuple):
  """Items as device arrays (cameras 0-based); a pytree, so jit takes it whole."""
  features: jax.Array
  cameras: jax.Array
  times: jax.Array


def _scores(a_features, a_cameras, a_times, b_features, b_cameras, b_times, st_table,
            bin_width, fusion):
  return scoring.fused_scores(scoring.cosine_scores(a_features, b_features), st_table,
                              bin_width, fusion, a_cameras, a_times, b_cameras, b_times)


@functools.partial(jax.jit, static_argnames=("k", "bin_width", "fusion"))
def _neighbour_chunk(rows_features, rows_cameras, rows_times, items: _Items, st_table, *,
                     k, bin_width, fusion):
  """For a chunk of rows: (k nearest indices [R, k], row max of the distances [R])."""
  dist = 2.0 - 2.0 * _scores(rows_features, rows_cameras, rows_times, items.features,
                             items.cameras, items.times, st_table, bin_width, fusion)
  _, index = jax.lax.top_k(-dist, k)  # equal values: lower index first
  return index.astype(jnp.int32), dist.max(axis=1)


@functools.partial(jax.jit, static_argnames=("bin_width", "fusion"))
def _pair_distances(i_index, j_index, items: _Items, st_table, *, bin_width, fusion):
  """d(i, j) for pairs given as int32 [P] index arrays."""
  fi, fj = items.features[i_index], items.features[j_index]
  visual = jnp.einsum("pd,pd->p", fi, fj, precision=jax.lax.Precision.HIGHEST)
  if st_table is None:
    return 2.0 - 2.0 * visual
  prob = scoring.pair_st_probabilities(st_table, bin_width, items.cameras[i_index],
                                      items.times[i_index], items.cameras[j_index],
                                      items.times[j_index])
  return 2.0 - 2.0 * scoring.joint_scores(visual, prob, fusion)


@functools.partial(jax.jit, static_argnames=("bin_width", "fusion", "lambda_value"))
def _final_ranks(q_features, q_cameras, q_times, q_row_max, jaccard, items_gallery: _Items,
                 st_table, good_index, junk_index, global_junk, *, bin_width, fusion,
                 lambda_value):
  """Ranks of good items under (1 - lambda) * Jaccard + lambda * normalised distance."""
  dist = 2.0 - 2.0 * _scores(q_features, q_cameras, q_times, items_gallery.features,
                             items_gallery.cameras, items_gallery.times, st_table, bin_width,
                             fusion)
  original = dist / q_row_max[:, None]
  final = jaccard * (1.0 - lambda_value) + original * lambda_value
  return metrics.good_item_ranks(-final, good_index, junk_index, global_junk)


def k_reciprocal_mask(neighbours: np.ndarray, k: int) -> np.ndarray:
  """bool [N, k + 1]: neighbours[i, m] is a k-reciprocal neighbour of i.

  j is in R(i, k) when j is among i's k + 1 nearest and i among j's k + 1 nearest.
  """
  forward = neighbours[:, :k + 1]
  backward = neighbours[forward, :k + 1]                     # [N, k+1, k+1]
  return (backward == np.arange(len(neighbours))[:, None, None]).any(axis=2)


def expansion_sets(neighbours: np.ndarray, k1: int) -> scipy.sparse.csr_matrix:
  """The k-reciprocal expansion set R*(i) of every item, as a 0/1 CSR [N, N].

  R*(i) = R(i, k1) plus R(c, round(k1 / 2)) of every c in R(i, k1) whose set
  shares more than 2/3 of its items with R(i, k1).
  """
  N = len(neighbours)
  half = int(np.around(k1 / 2.0))
  full_mask = k_reciprocal_mask(neighbours, k1)              # [N, k1+1]
  half_mask = k_reciprocal_mask(neighbours, half)            # [N, half+1]
  full_sets = np.where(full_mask, neighbours[:, :k1 + 1], -1)
  half_sets = np.where(half_mask, neighbours[:, :half + 1], -2)
  rows, cols = [], []
  for start in range(0, N, 4096):
    stop = min(N, start + 4096)
    f = full_sets[start:stop]                                # [n, k1+1], -1 pads
    cand = np.where(f >= 0, f, 0)
    c_sets = half_sets[cand]                                 # [n, k1+1, half+1], -2 pads
    c_size = (c_sets >= 0).sum(axis=2)
    shared = (c_sets[:, :, :, None] == f[:, None, None, :]).any(axis=3).sum(axis=2)
    take = (f >= 0) & (shared > 2.0 / 3.0 * c_size)
    members = np.concatenate([f, np.where(take[:, :, None], c_sets, -1).reshape(len(f), -1)],
                             axis=1)
    r, m = np.nonzero(members >= 0)
    rows.append(r + start)
    cols.append(members[r, m])
  rows, cols = np.concatenate(rows), np.concatenate(cols)
  sets = scipy.sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N, N))
  sets.data[:] = 1.0  # duplicates were summed: a set holds each item once
  return sets


def jaccard_block(v_rows: scipy.sparse.csr_matrix, v_cols: scipy.sparse.csc_matrix,
                  col_start: int, col_stop: int) -> np.ndarray:
  """1 - m / (2 - m) with m[i, j] = sum_k min(V[i, k], V[j, k]), for j in [col_start, col_stop).

  Args:
    v_rows: the rows i of V (a chunk of queries), CSR [n, N].
    v_cols: V transposed, CSR [N, N]: its row k lists the items j with V[j, k] != 0.
  Returns:
    float32 [n, col_stop - col_start].
  """
  n = v_rows.shape[0]
  width = col_stop - col_start
  i_idx = np.repeat(np.arange(n), np.diff(v_rows.indptr))
  k_idx, a = v_rows.indices, v_rows.data
  counts = np.diff(v_cols.indptr)[k_idx]
  starts = v_cols.indptr[k_idx]
  total = int(counts.sum())
  # Expand every (i, k) into the items j having V[j, k] != 0.
  offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
  pos = np.repeat(starts, counts) + offsets
  j, b = v_cols.indices[pos], v_cols.data[pos]
  i_rep, a_rep = np.repeat(i_idx, counts), np.repeat(a, counts)
  keep = (j >= col_start) & (j < col_stop)
  flat = i_rep[keep] * width + (j[keep] - col_start)
  m = np.bincount(flat, weights=np.minimum(a_rep[keep], b[keep]), minlength=n * width)
  m = m.reshape(n, width).astype(np.float32)
  return 1.0 - m / (2.0 - m)


def _items(s: Records) -> _Items:
  return _Items(jnp.asarray(s.features, jnp.float32), jnp.asarray(s.cameras, jnp.int32),
                jnp.asarray(s.times, jnp.int32))


def rerank_ranks(query: Records, gallery: Records, st_table: np.ndarray | None,
                 good_index: np.ndarray, junk_index: np.ndarray,
                 params: RerankParams = RerankParams(), bin_width: int = 100,
                 fusion: scoring.FusionParams = scoring.FusionParams(), row_chunk: int = 0,
                 chunk_elements: int = 1 << 22) -> np.ndarray:
  """Good-item ranks [Q, K] of every query under the re-ranked distance.

  Args:
    query, gallery: normalised features and metadata.
    st_table: ST probabilities [C, C, H] for the joint score, or None for visual.
    good_index, junk_index: int32 [Q, K] from ``evaluate.match_lists``.
    params: k1, k2, lambda.
    row_chunk: rows per chunk of the dense passes (0: from chunk_elements).
  """
  Q, G = len(query), len(gallery)
  N = Q + G
  everything = records_lib.concatenate(query, gallery)
  items = _items(everything)
  table = None if st_table is None else jnp.asarray(st_table, jnp.float32)
  static = dict(bin_width=int(bin_width), fusion=fusion)
  chunk = min(N, row_chunk or max(8, chunk_elements // N))
  k = min(N, params.k1 + 1)
  start_time = last_log = time.time()

  # 1. Nearest neighbours and row maxima, one dense row chunk at a time.
  neighbours = np.empty((N, k), np.int32)
  row_max = np.empty((N,), np.float32)
  for s in range(0, N, chunk):
    e = min(N, s + chunk)
    # The last chunk is padded with the first rows (results dropped) to keep one shape.
    pad = lambda x: jnp.asarray(np.concatenate([x[s:e], x[:chunk - (e - s)]]))
    idx, mx = _neighbour_chunk(pad(everything.features), pad(everything.cameras),
                                  pad(everything.times), items, table, k=k, **static)
    neighbours[s:e] = np.asarray(idx)[:e - s]
    row_max[s:e] = np.asarray(mx)[:e - s]
    if time.time() - last_log > 10 and e < N:
      rate = e / (time.time() - start_time)
      logging.info("rerank: neighbours of %d/%d items, ETA %.0f s", e, N, (N - e) / rate)
      last_log = time.time()
  logging.info("rerank: neighbours of %d items in %.1f s", N, time.time() - start_time)

  # 2. Weights V[i, j] = exp(-d(i, j) / max_i) / sum over R*(i).
  sets = expansion_sets(neighbours, params.k1)
  rows = np.repeat(np.arange(N), np.diff(sets.indptr)).astype(np.int32)
  cols = sets.indices.astype(np.int32)
  dist = np.empty(len(rows), np.float32)
  pair_chunk = 1 << 13  # [pairs, D] gathers: 64 MB each at 2048-d
  for s in range(0, len(rows), pair_chunk):
    e = min(len(rows), s + pair_chunk)
    i = np.zeros(pair_chunk, np.int32)
    j = np.zeros(pair_chunk, np.int32)
    i[:e - s], j[:e - s] = rows[s:e], cols[s:e]
    dist[s:e] = np.asarray(_pair_distances(jnp.asarray(i), jnp.asarray(j), items, table,
                                           **static))[:e - s]
  weight = np.exp(-(dist / row_max[rows]).astype(np.float64))
  weight_sum = np.bincount(rows, weights=weight, minlength=N)
  V = scipy.sparse.csr_matrix(((weight / weight_sum[rows]).astype(np.float32), (rows, cols)),
                              shape=(N, N))

  # 3. Query expansion: V_qe[i] = mean of V over i's k2 nearest neighbours.
  if params.k2 != 1:
    k2 = min(params.k2, k)
    expand = scipy.sparse.csr_matrix(
        (np.full(N * k2, 1.0 / k2, np.float32),
         (np.repeat(np.arange(N), k2), neighbours[:, :k2].reshape(-1))), shape=(N, N))
    V = (expand @ V).tocsr()
  V.eliminate_zeros()
  v_by_column = V.T.tocsr()  # row k: the items j with V[j, k] != 0

  # 4. Final distance on the query x gallery block, in query chunks, then ranks.
  gallery_items = _items(gallery)
  global_junk = jnp.asarray(gallery.person_ids == -1)
  q_chunk = max(1, min(Q, chunk_elements // max(G, 1)))
  ranks = np.empty(good_index.shape, np.int64)
  for s in range(0, Q, q_chunk):
    e = min(Q, s + q_chunk)
    n = e - s
    padded = lambda x, v: pad_rows(np.asarray(x)[s:e], q_chunk, v)
    jac = jaccard_block(V[s:e], v_by_column, Q, N)
    jac = pad_rows(jac, q_chunk, 1.0)
    out = _final_ranks(
        jnp.asarray(padded(query.features, 0.0)), jnp.asarray(padded(query.cameras, 0)),
        jnp.asarray(padded(query.times, 0)), jnp.asarray(padded(row_max[:Q], 1.0)),
        jnp.asarray(jac), gallery_items, table, jnp.asarray(padded(good_index, -1)),
        jnp.asarray(padded(junk_index, -1)), global_junk, lambda_value=params.lambda_value,
        **static)
    ranks[s:e] = np.asarray(out)[:n]
  logging.info("rerank: %d x %d done in %.1f s", Q, G, time.time() - start_time)
  return ranks
