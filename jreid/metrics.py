"""CMC, AP (trapezoid and plain) and mINP under the Market-1501 protocol.

The kernel ``good_item_ranks`` turns a block of scores into the 0-based rank of
every good item after junk removal, without sorting the gallery: the good items
of a query (a handful) are sorted, and each gallery item finds by binary search
how many good items rank before it; a histogram of the negatives over those
positions gives every good item's rank. O(Q G log K) work, O(Q G) memory.

Its three steps are public so that a gallery split in blocks (column tiles of one
device, shards over devices) is ranked exactly: the good scores are the maximum
over blocks (``gather_good_scores``), and the histograms of negatives add over
blocks (``negatives_histogram``); ``ranks_from_histogram`` finishes.

Order: descending score, ties broken by ascending gallery index (what a stable
``argsort(-score)`` gives). Protocol (``docs/reference.md`` section 4):
good = same id and different camera; junk = same id and same camera, or gallery
id -1; junk is removed before counting; id 0 stays as a negative.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

_NO_INDEX = np.iinfo(np.int32).max
_LINEAR_MAX_GOODS = 64  # up to this many good items per query: compare with each


def good_item_ranks(scores: jax.Array, good_index: jax.Array, junk_index: jax.Array,
                    global_junk: jax.Array) -> jax.Array:
  """0-based ranks, after junk removal, of each query's good items.

  Args:
    scores: float32 [Q, G], larger is better.
    good_index: int32 [Q, K] gallery indices of the good items; padding is any
      value outside [0, G).
    junk_index: int32 [Q, J] per-query junk (same id, same camera); padding as above.
    global_junk: bool [G] junk for every query (gallery id -1).
  Returns:
    int32 [Q, K]: rank of the i-th best good item in column i (ascending), and
    ``INT32_MAX`` in the padding columns.
  """
  G = scores.shape[1]
  good_scores = gather_good_scores(scores, 0, jnp.ones((G,), jnp.bool_), good_index)
  hist = negatives_histogram(scores, 0, jnp.ones((G,), jnp.bool_), global_junk, good_index,
                             junk_index, *sort_good_items(good_scores, good_index, G))
  return ranks_from_histogram(hist, good_index, G)


def gather_good_scores(scores: jax.Array, offset, column_valid: jax.Array,
                       good_index: jax.Array) -> jax.Array:
  """Scores of the good items that fall in a block of columns, -inf for the others.

  Args:
    scores: float32 [Q, L], a block of gallery columns: column c is gallery item
      ``offset + c`` (offset an int32 scalar, may be traced).
    column_valid: bool [L], False for columns that are not gallery items (padding,
      query items of a joint item list); they are never read.
    good_index: int32 [Q, K] gallery indices (padding outside [0, G)).
  Returns:
    float32 [Q, K]. The good scores of the whole gallery are the maximum over the
    blocks (``lax.pmax`` over gallery shards, ``jnp.maximum`` over column tiles).
  """
  L = scores.shape[1]
  local = good_index - offset
  inside = (local >= 0) & (local < L)
  local = jnp.where(inside, local, 0)
  inside &= column_valid[local]
  return jnp.where(inside, jnp.take_along_axis(scores, local, axis=1), -jnp.inf)


def sort_good_items(good_scores: jax.Array, good_index: jax.Array, num_gallery: int
                    ) -> tuple[jax.Array, jax.Array]:
  """Good items sorted by (score desc, index asc), padding last: (scores, indices) [Q, K]."""
  good_valid = (good_index >= 0) & (good_index < num_gallery)
  good_scores = jnp.where(good_valid, good_scores, -jnp.inf)
  order_index = jnp.where(good_valid, good_index, _NO_INDEX).astype(jnp.int32)
  neg_sorted, sorted_index = jax.lax.sort((-good_scores, order_index), num_keys=2)
  return -neg_sorted, sorted_index


def negatives_histogram(scores: jax.Array, offset, column_valid: jax.Array,
                        column_junk: jax.Array, good_index: jax.Array, junk_index: jax.Array,
                        sorted_scores: jax.Array, sorted_index: jax.Array) -> jax.Array:
  """hist[q, i]: negatives of a block of columns with exactly i good items before them.

  Args:
    scores: float32 [Q, L], column c is gallery item ``offset + c``.
    column_valid: bool [L]; invalid columns are not counted.
    column_junk: bool [L], junk for every query (gallery id -1).
    good_index, junk_index: int32 [Q, K], [Q, J] gallery indices, padding outside [0, G).
    sorted_scores, sorted_index: the good items of the whole gallery (``sort_good_items``).
  Returns:
    int32 [Q, K + 1]. Histograms of disjoint blocks add (gallery shards, column tiles).
  """
  Q, L = scores.shape
  K = good_index.shape[1]
  rows = jnp.arange(Q)[:, None]
  # For every column j: how many good items precede it.
  column_index = (offset + jnp.arange(L, dtype=jnp.int32))[None, :]
  if K <= _LINEAR_MAX_GOODS:
    # Compare with each good item: K row-broadcast compares fused in one loop, no
    # gathers (much faster than a binary search on CPU for Market's K; a [Q, L, K]
    # form would be materialised).
    goods_before = jnp.zeros((Q, L), jnp.int32)
    for k in range(K):
      s_k, i_k = sorted_scores[:, k:k + 1], sorted_index[:, k:k + 1]
      goods_before += ((s_k > scores) | ((s_k == scores) & (i_k < column_index))).astype(jnp.int32)
  else:
    # Binary search; the sorted good items are read through flat 1-D gathers.
    flat_scores, flat_index = sorted_scores.reshape(-1), sorted_index.reshape(-1)
    row_base = (jnp.arange(Q, dtype=jnp.int32) * K)[:, None]
    lo = jnp.zeros((Q, L), jnp.int32)
    hi = jnp.full((Q, L), K, jnp.int32)
    for _ in range(max(1, int(np.ceil(np.log2(K + 1))))):
      mid = (lo + hi) // 2
      at = row_base + jnp.minimum(mid, K - 1)
      s_mid, i_mid = flat_scores[at], flat_index[at]
      good_first = (s_mid > scores) | ((s_mid == scores) & (i_mid < column_index))
      good_first &= mid < hi
      lo = jnp.where(good_first, mid + 1, lo)
      hi = jnp.where(good_first, hi, mid)
    goods_before = lo

  # Negatives: neither junk nor good (nor an invalid column).
  excluded = jnp.zeros((Q, L), jnp.bool_) | (column_junk | ~column_valid)[None, :]
  # Items outside the block (and padding) are sent out of bounds and dropped.
  local = lambda index: jnp.where((index - offset >= 0) & (index - offset < L), index - offset, L)
  excluded = excluded.at[rows, local(good_index)].set(True, mode="drop")
  excluded = excluded.at[rows, local(junk_index)].set(True, mode="drop")
  return jnp.zeros((Q, K + 1), jnp.int32).at[rows, goods_before].add(
      (~excluded).astype(jnp.int32))


def ranks_from_histogram(hist: jax.Array, good_index: jax.Array, num_gallery: int) -> jax.Array:
  """int32 [Q, K] good-item ranks (``good_item_ranks``) from the summed histograms."""
  K = good_index.shape[1]
  good_valid = (good_index >= 0) & (good_index < num_gallery)
  # negatives_before[i] = #{negative j : goods_before_j <= i}.
  negatives_before = jnp.cumsum(hist, axis=1)[:, :K]
  valid_sorted = jnp.arange(K)[None, :] < good_valid.sum(axis=1, keepdims=True)
  return jnp.where(valid_sorted, jnp.arange(K, dtype=jnp.int32)[None, :] + negatives_before,
                   _NO_INDEX)


@dataclasses.dataclass(frozen=True)
class RetrievalMetrics:
  """Averages over the queries with at least one good item; fractions in [0, 1].

  Attributes:
    cmc: float64 [max_rank] CMC curve, cmc[k-1] = CMC@k.
    ranks_1_5_10: CMC@1, @5 and @10 (computed whatever max_rank is).
    mAP: mean official (trapezoid) AP. mAP_plain: mean non-interpolated AP.
    mINP: mean inverse negative penalty (n_good / (rank of the last good + 1)).
    num_queries: all queries; num_valid_queries: those averaged.
  """
  cmc: np.ndarray
  mAP: float
  mAP_plain: float
  mINP: float
  num_queries: int
  num_valid_queries: int
  ranks_1_5_10: tuple[float, float, float]

  def summary(self) -> dict:
    """rank-1/5/10 (whatever the stored curve's length), mAP, mINP and the query counts."""
    rank1, rank5, rank10 = self.ranks_1_5_10
    return dict(rank1=rank1, rank5=rank5, rank10=rank10, mAP=self.mAP,
                mAP_plain=self.mAP_plain, mINP=self.mINP, num_queries=self.num_queries,
                num_valid_queries=self.num_valid_queries)


def average_precision(ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Official trapezoid AP and plain AP from sorted good-item ranks.

  Args:
    ranks: int [Q, K] 0-based ranks after junk removal, ascending per row, padded
      with values >= 2**31 - 1.
  Returns:
    (trapezoid AP, plain AP), float64 [Q]; 0 for a query with no good item.
  """
  ranks = np.asarray(ranks, np.int64)
  valid = ranks < _NO_INDEX
  n_good = valid.sum(axis=1)
  i = np.arange(ranks.shape[1], dtype=np.float64)[None, :]
  r = np.where(valid, ranks, 0).astype(np.float64)
  precision = (i + 1.0) / (r + 1.0)
  previous = np.where(r != 0, i / np.where(r != 0, r, 1.0), 1.0)
  d_recall = 1.0 / np.maximum(n_good, 1)[:, None]
  trapezoid = np.where(valid, d_recall * (previous + precision) / 2.0, 0.0).sum(axis=1)
  plain = np.where(valid, precision * d_recall, 0.0).sum(axis=1)
  return trapezoid, plain


def retrieval_metrics(ranks: np.ndarray, max_rank: int) -> RetrievalMetrics:
  """CMC curve, mAP (both kinds) and mINP from per-query good-item ranks [Q, K]."""
  ranks = np.asarray(ranks, np.int64)
  valid = ranks < _NO_INDEX
  n_good = valid.sum(axis=1)
  has_good = n_good > 0
  ap, ap_plain = average_precision(ranks)
  first = ranks[:, 0] if ranks.shape[1] else np.zeros(len(ranks), np.int64)
  # CMC@k = the share of queries whose first good item ranks below k: a cumulative
  # count of the first ranks (memory O(max_rank), not O(Q x max_rank)).
  firsts = first[has_good]
  counts = np.bincount(np.minimum(firsts, max_rank), minlength=max_rank + 1)[:max_rank]
  last = np.where(valid, ranks, -1).max(axis=1) if ranks.shape[1] else first
  inp = n_good / np.maximum(last + 1.0, 1.0)
  n_valid = int(has_good.sum())
  mean = lambda x: float(x[has_good].mean()) if n_valid else 0.0
  at = lambda k: mean(first < k)
  return RetrievalMetrics(
      cmc=np.cumsum(counts) / n_valid if n_valid else np.zeros(max_rank),
      mAP=mean(ap), mAP_plain=mean(ap_plain), mINP=mean(inp),
      num_queries=len(ranks), num_valid_queries=n_valid,
      ranks_1_5_10=(at(1), at(5), at(10)))


def format_table(results: dict) -> str:
  """A short text table of rank-1/5/10, mAP and mINP (percent) per method."""
  lines = [f"{'method':<14}{'rank-1':>8}{'rank-5':>8}{'rank-10':>8}{'mAP':>8}{'mINP':>8}"]
  for kind, r in results.items():
    lines.append(f"{kind:<14}" + "".join(f"{100 * r[k]:>8.2f}"
                                         for k in ("rank1", "rank5", "rank10", "mAP", "mINP")))
  return "\n".join(lines)
