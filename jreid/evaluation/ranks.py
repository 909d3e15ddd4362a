"""The ranks pass: query chunks x gallery tiles -> every method's good-item ranks and top items.

One matmul per column tile serves every method (visual, ST, and both re-ranked
with their Jaccard distances) and the top items. The devices each sweep their
block of the gallery and merge with one collective per quantity: good-item scores
by a max, negative counts by a sum (``jreid.metrics``), top items by the k
smallest order keys.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jreid import metrics
from jreid import progress as progress_lib
from jreid import protocol
from jreid import records as records_lib
from jreid import rerank as rerank_lib
from jreid.evaluation import common
from jreid.evaluation import rerank_pass

AXIS = common.AXIS

class TopArrays(NamedTuple):
  """Each query's best gallery items by one score kind (host arrays, [Q, k])."""
  order: np.ndarray   # float32: -score (``protocol.LEFT_OUT_ORDER``: junk), ascending
  index: np.ndarray   # int64 gallery rows
  cosine: np.ndarray  # float32 cosine similarity


def tile_top(scores, cosine, gallery_offset, valid, junk_cols, junk, width):
  """Each query's ``width`` best gallery items of a score tile, junk left out.

  Args:
    scores, cosine: float32 [c, L] (column l is gallery item ``gallery_offset + l``).
    valid, junk_cols: bool [L]: a gallery item of this tile; gallery id -1.
    junk: int32 [c, J] each query's same-id same-camera gallery items (padding outside).
  Returns:
    (order key, gallery index, cosine) [c, width], by the order key ascending (what
    ``common.merge_nearest`` merges; ``protocol.best_items``): -score,
    ``protocol.LEFT_OUT_ORDER`` for junk, +inf for columns that are no gallery item
    (index ``common.EMPTY_INDEX``).
  """
  c, L = scores.shape
  rows = jnp.arange(c)[:, None]
  local = jnp.where((junk >= gallery_offset) & (junk < gallery_offset + L),
                    junk - gallery_offset, L)
  is_junk = jnp.zeros((c, L), bool).at[rows, local].set(True, mode="drop") | junk_cols[None, :]
  order, position = protocol.best_items(scores, is_junk, width, valid)
  index = jnp.where(order < jnp.inf, gallery_offset + position, common.EMPTY_INDEX)
  return order, index.astype(jnp.int32), jnp.take_along_axis(cosine, position, axis=1)


def ranks_kernel(mesh, methods: tuple[common.Method, ...], block, tile, first_gallery,
                 num_gallery, num_items, num_terms, lambda_value, bin_width, fusion, top_k=0,
                 top_kind="visual", rerank_kinds: tuple[str, ...] = ()):
  """Query chunk [c] x gallery -> good-item ranks [methods, c, K] of every method, and
  with ``top_k`` each query's best gallery items by ``top_kind``.

  With ``tile < block`` (no re-ranking) the tiles are swept twice: the good items'
  scores first, the negatives (and the top items) then, so that both come from the very
  same score tiles; with one tile, one sweep does both.

  Returns:
    (q_f, q_c, q_t, good, junk, ``common.Columns``, ST factor table, rerank) ->
    (ranks int32 [methods, c, K], Jaccard terms used int32 [rerank kinds, c],
    top (order, index, cosine) [c, top_k]). ``rerank`` is () without re-ranking
    methods, else (``rerank_pass.QueryRows`` of the chunk, ``rerank_pass.InvertedIndex``).
  """
  kinds = sorted({m.score for m in methods} | ({top_kind} if top_k else set()),
                 key=common.SCORE_KINDS.index)
  num_tiles = -(-block // tile)
  top_width = min(top_k, tile)

  def body(q_f, q_c, q_t, good, junk, cols: common.Columns, table, rerank):
    offset = common.block_offset(block)
    jaccard, used = {}, []
    if rerank_kinds:
      query, inverted = rerank
      for r, kind in enumerate(rerank_kinds):
        jaccard[kind], terms = rerank_lib.jaccard_distance(
            query.index[r], query.value[r], inverted.item[r], inverted.weight[r],
            inverted.start[r], block, num_items, num_terms)
        used.append(terms)

    def tile_scores(t):
      begin = jnp.minimum(t * tile, block - tile)
      take = lambda x: jax.lax.dynamic_slice_in_dim(x, begin, tile, axis=0)
      f, c, tm = take(cols.features), take(cols.cameras), take(cols.times)
      # Columns before t * tile were already seen (the last tile is shifted back).
      valid = take(cols.ranked) & (begin + jnp.arange(tile) >= t * tile)
      cosine = jnp.dot(q_f, f.T, precision=jax.lax.Precision.HIGHEST,
                       preferred_element_type=jnp.float32)
      scores = {kind: common.kind_scores(kind, cosine, table, bin_width, fusion, q_c[:, None],
                                         q_t[:, None], c[None, :], tm[None, :])
                for kind in kinds}
      out = []
      for method in methods:
        s = scores[method.score]
        if method.rerank:
          r = rerank_kinds.index(method.score)
          original = (2.0 - 2.0 * s) / rerank[0].row_max[r][:, None]
          jac = jax.lax.dynamic_slice_in_dim(jaccard[method.score], begin, tile, axis=1)
          s = -(jac * (1.0 - lambda_value) + original * lambda_value)
        out.append(s)
      return (out, offset - first_gallery + begin, valid, take(cols.junk), scores.get(top_kind),
              cosine)

    # Stacks over methods (there may be none: the top items alone).
    stack = lambda xs, empty: jnp.stack(xs) if xs else empty
    no_scores = jnp.full((len(methods),) + good.shape, -jnp.inf, jnp.float32)

    def good_scores(tiled, best):
      out, gallery_offset, valid, *_ = tiled
      return stack([jnp.maximum(b, metrics.gather_good_scores(s, gallery_offset, valid, good))
                    for s, b in zip(out, best)], best)

    def count(tiled, best, hist, top):
      out, gallery_offset, valid, junk_cols, top_scores, cosine = tiled
      new = []
      for m, s in enumerate(out):
        sorted_scores, sorted_index = metrics.sort_good_items(best[m], good, num_gallery)
        new.append(hist[m] + metrics.negatives_histogram(
            s, gallery_offset, valid, junk_cols, good, junk, sorted_scores, sorted_index))
      if top_k:
        order, index, top_cosine = top
        new_order, new_index, new_cosine = tile_top(top_scores, cosine, gallery_offset, valid,
                                                    junk_cols, junk, top_width)
        top = common.merge_nearest((order, new_order), (index, new_index), top_k,
                                   ((top_cosine, new_cosine),))
      return stack(new, hist), top

    hist = jnp.zeros((len(methods), good.shape[0], good.shape[1] + 1), jnp.int32)
    top = tuple(jnp.full(good.shape[:1] + (top_k,), v, dtype)
                for v, dtype in ((jnp.inf, jnp.float32), (common.EMPTY_INDEX, jnp.int32),
                                 (0.0, jnp.float32)))
    if num_tiles == 1:  # one tile: its scores serve both sweeps
      tiled = tile_scores(0)
      best = jax.lax.pmax(good_scores(tiled, no_scores), AXIS)
      hist, top = count(tiled, best, hist, top)
    else:
      best = jax.lax.pmax(jax.lax.fori_loop(
          0, num_tiles, lambda t, b: good_scores(tile_scores(t), b), no_scores), AXIS)
      hist, top = jax.lax.fori_loop(
          0, num_tiles, lambda t, c: count(tile_scores(t), best, *c), (hist, top))
    hist = jax.lax.psum(hist, AXIS)
    ranks = stack([metrics.ranks_from_histogram(h, good, num_gallery) for h in hist],
                  jnp.zeros((0,) + good.shape, jnp.int32))
    used = jnp.stack(used) if used else jnp.zeros((0,), jnp.int32)
    # The devices' top items, merged (every device ends with the same lists).
    if top_k:
      order, index, top_cosine = (jax.lax.all_gather(x, AXIS, axis=1, tiled=True) for x in top)
      top = common.merge_nearest((order,), (index,), top_k, ((top_cosine,),))
    return ranks, jax.lax.pmax(used, AXIS), top

  lists = P(None, AXIS)
  rerank_spec = ((rerank_pass.QueryRows(P(), P(), P()),
                  rerank_pass.InvertedIndex(lists, lists, lists)) if rerank_kinds else ())
  return jax.shard_map(body, mesh=mesh,
                       in_specs=(P(),) * 5 + (common.COLUMNS_SPEC, P(), rerank_spec),
                       out_specs=(P(), P(), (P(),) * 3), check_vma=False)


def ranks_pass(place: common.Placement, timer: common.Timer, kernel, rows: int, what: str,
               queries: tuple, good: np.ndarray, junk: np.ndarray, cols: common.Columns,
               table, rerank: rerank_pass.RerankInputs | None, num_methods: int, top_k: int,
               num_terms: int) -> tuple[np.ndarray, TopArrays]:
  """Runs ``kernel`` (``ranks_kernel``) over the queries in chunks of ``rows``.

  Args:
    queries: (features float32 [Q, D], cameras, times int32 [Q]).
    good, junk: int32 [Q, K] / [Q, J] from ``protocol.match_lists``.
  Returns:
    (ranks int64 [methods, Q, K], the top items).
  """
  q_f, q_c, q_t = queries
  Q = len(q_c)

  def args(s, e):
    pad = lambda x, v: place.put(records_lib.pad_rows(x[s:e], rows, v))
    extra = ()
    if rerank is not None:
      pad_k = lambda x, v: place.put(np.stack([records_lib.pad_rows(y[s:e], rows, v)
                                               for y in x]))
      query = rerank.query
      extra = (rerank_pass.QueryRows(pad_k(query.row_max, 1.0),
                                     pad_k(query.index, rerank.num_items),
                                     pad_k(query.value, 0.0)), rerank.inverted)
    return (pad(q_f, 0.0), pad(q_c, 0), pad(q_t, 0), pad(good, -1), pad(junk, -1), cols,
            table, extra)

  compiled = timer.compile(f"ranks ({what})", kernel, *args(0, rows))
  ranks = np.empty((num_methods,) + good.shape, np.int64)
  top = TopArrays(*(np.empty((Q, top_k), dtype) for dtype in (np.float32, np.int64, np.float32)))
  progress = progress_lib.Progress(f"evaluate ({what})", Q, "queries")
  start_time = time.time()
  for s, e in common.chunks(Q, rows):
    out, used, found = compiled(*args(s, e))
    used = common.host(used)
    if used.size and used.max() > num_terms:
      raise AssertionError(f"Jaccard terms {used.max()} exceed the {num_terms} slots")
    ranks[:, s:e] = common.host(out)[:, :e - s]
    for dst, src in zip(top, found):
      dst[s:e] = common.host(src)[:e - s]
    progress.update(e)
  progress.finish()
  timer.add("ranks", time.time() - start_time)
  return ranks, top
