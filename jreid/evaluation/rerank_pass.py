"""Re-ranking's inputs to the ranks pass: neighbours -> expansion sets -> V -> inverted index.

After the neighbour pass (``neighbours``), fixed-width sparse kernels
(``jreid.rerank``) build every item's expansion set, its weights V (from the
distances to the members of the kinds' union, computed in chunks by the pair
kernel), the query expansion, and the inverted index of V's columns split over
the mesh. The ranks pass then reads the queries' V rows and the index
(``RerankInputs``).
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jreid import progress as progress_lib
from jreid import records as records_lib
from jreid import rerank as rerank_lib
from jreid.evaluation import common
from jreid.evaluation import neighbours as neighbours_lib
from jreid.evaluation import plan as plan_lib

AXIS = common.AXIS


class QueryRows(NamedTuple):
  """The queries' side of re-ranking, per kind (host arrays; chunked by the ranks pass)."""
  row_max: np.ndarray  # float32 [kinds, Q]: max_j d(q, j) over all items
  index: np.ndarray    # int32 [kinds, Q, W]: V's non-zero columns (N: empty)
  value: np.ndarray    # float32 [kinds, Q, W]: their weights


class InvertedIndex(NamedTuple):
  """V's columns of each device's block of items, per kind (sharded over the mesh)."""
  item: jax.Array    # int32 [kinds, devices S]: the rows (items) of each column's weights
  weight: jax.Array  # float32 [kinds, devices S]
  start: jax.Array   # int32 [kinds, devices (L + 1)]: where each column's list starts


class RerankInputs(NamedTuple):
  """What the ranks pass needs to re-rank: the queries' V rows, the inverted index, the
  Jaccard terms of each query, and the item columns (every item, queries first)."""
  query: QueryRows
  inverted: InvertedIndex
  terms: np.ndarray        # int [kinds, Q]: Jaccard terms of each query
  columns: common.Columns
  block: int               # items per device
  num_items: int           # N = Q + G (the empty slot of the V rows)


def members_union(neighbours, *, k1, num_items):
  """Per kind the expansion sets [kinds, N, M], and their union per item [N, kinds M]."""
  members, counts = jax.vmap(lambda nb: rerank_lib.expansion_members(nb, k1))(neighbours)
  kinds, N, M = members.shape
  union, union_counts = rerank_lib.sorted_unique_rows(
      jnp.moveaxis(members, 0, 1).reshape(N, kinds * M), num_items)
  return members, counts.max(), union, union_counts.max()


def pair_kernel(mesh, kinds, block, bin_width, fusion, step_rows):
  """d(i, m) for rows i [R] and their members m [R, W] -> float32 [kinds, R, W].

  The member features are gathered ``step_rows`` rows at a time (R a multiple; see
  ``plan.Plan.gather_step_elements``).
  """

  def body(row_f, row_c, row_t, members, member_c, member_t, features, table):
    offset = common.block_offset(block)
    local = members - offset
    inside = (local >= 0) & (local < block)
    R, W = members.shape

    def step(rows):
      f, index = rows
      return jnp.einsum("rd,rwd->rw", f, features[index], precision=jax.lax.Precision.HIGHEST)

    dot = jax.lax.map(step, (row_f.reshape(R // step_rows, step_rows, -1),
                             jnp.where(inside, local, 0).reshape(R // step_rows, step_rows, W)))
    cosine = jax.lax.psum(jnp.where(inside, dot.reshape(R, W), 0.0), AXIS)
    return jnp.stack([
        2.0 - 2.0 * common.kind_scores(kind, cosine, table, bin_width, fusion, row_c[:, None],
                                       row_t[:, None], member_c, member_t) for kind in kinds])

  return jax.shard_map(body, mesh=mesh, in_specs=(P(),) * 6 + (P(AXIS), P()),
                       out_specs=P(), check_vma=False)


def build_v(members, union, union_distances, row_max, neighbours, *, k2, num_items):
  """V rows per kind ([kinds, N, W]) from the distances to the union members; then the
  query expansion when k2 > 1. Returns (index, value, max count)."""

  def one(m, d_union, mx, nb):
    pos = jnp.minimum(rerank_lib.row_positions(union, m), union.shape[1] - 1)
    d = jnp.take_along_axis(d_union, pos, axis=1)
    value = rerank_lib.weights(m, d, mx, num_items)
    if k2 == 1:
      return m, value, (m < num_items).sum(axis=1).max()
    index, value, counts = rerank_lib.query_expansion(m, value, nb, k2, num_items)
    return index, value, counts.max()

  return jax.vmap(one)(members, union_distances, row_max, neighbours)


def column_lists_kernel(mesh, num_kinds, num_items):
  """V rows split over the mesh -> each block's inverted index, and term counts of queries."""

  def body(index, value, query_index):
    outs = [rerank_lib.column_lists(index[k], value[k], num_items) for k in range(num_kinds)]
    item, weight, start = (jnp.stack(x) for x in zip(*outs))
    counts = jnp.stack([rerank_lib.term_counts(query_index[k], start[k], num_items)
                        for k in range(num_kinds)])
    return item, weight, start, jax.lax.pmax(counts, AXIS)

  spec = P(None, AXIS)
  return jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, P()),
                       out_specs=(spec, spec, spec, P()), check_vma=False)


def rerank_inputs(place: common.Placement, timer: common.Timer, plan: plan_lib.Plan, kinds,
                  items: tuple, num_queries: int, table, params: rerank_lib.RerankParams,
                  bin_width: int, fusion) -> RerankInputs:
  """Neighbour pass + V + query expansion + inverted index, for the kinds to re-rank.

  Args:
    items: (features float32 [N, D], cameras, times int32 [N], ranked, junk bool [N])
      of every item, the ``num_queries`` queries first.
    table: the ST factor table on the mesh ([1, 1, 1] zeros for visual only).
  """
  features, cameras, times, ranked, junk = items
  N = len(cameras)
  k = min(N, params.k1 + 1)
  tile, block = plan.square_tiles(-(-N // place.devices), k)
  cols, block = common.columns(place, features, cameras, times, ranked, junk, block)
  neighbours, row_max = neighbours_lib.neighbour_pass(place, timer, kinds, cols, N, k, tile,
                                                      table, bin_width, fusion)

  expand = timer.compile("expansion sets", functools.partial(
      members_union, k1=params.k1, num_items=N), neighbours)
  start_time = time.time()
  members, width, union, union_width = expand(neighbours)
  width, union_width = int(width), int(union_width)
  members, union = members[:, :, :max(1, width)], np.asarray(union)[:, :max(1, union_width)]
  logging.info("rerank: expansion sets of up to %d items (%d for the kinds together, mean %.1f)",
               width, union_width, float((union < N).sum(axis=1).mean()))
  timer.add("expansion sets", time.time() - start_time)

  pair_rows, step_rows = plan.pair_chunks(N, union.shape[1] * features.shape[1])
  union_c = np.append(np.asarray(cameras, np.int32), 0)[union]  # N (empty slot) -> 0
  union_t = np.append(np.asarray(times, np.int32), 0)[union]
  pairs = pair_kernel(place.mesh, kinds, block, bin_width, fusion, step_rows)
  union_distances = np.empty((len(kinds),) + union.shape, np.float32)
  p_pad = lambda x, s, e, v: place.put(records_lib.pad_rows(x[s:e], pair_rows, v))
  p_args = lambda s, e: (p_pad(features, s, e, 0.0), p_pad(cameras, s, e, 0),
                         p_pad(times, s, e, 0), p_pad(union, s, e, N),
                         p_pad(union_c, s, e, 0), p_pad(union_t, s, e, 0))
  pairs = timer.compile("pair distances", pairs, *p_args(0, pair_rows), cols.features, table)
  start_time = time.time()
  progress = progress_lib.Progress("rerank pair distances", N, "items")
  for s, e in common.chunks(N, pair_rows):
    union_distances[:, s:e] = common.host(pairs(*p_args(s, e), cols.features, table))[:, :e - s]
    progress.update(e)
  progress.finish()
  timer.add("pair distances", time.time() - start_time)

  k2 = min(params.k2, k)
  v_args = (members, jnp.asarray(union), jnp.asarray(union_distances), jnp.asarray(row_max),
            jnp.asarray(neighbours))
  v_rows = timer.compile("weights and query expansion", functools.partial(
      build_v, k2=k2, num_items=N), *v_args)
  start_time = time.time()
  index, value, width = v_rows(*v_args)
  width = max(1, int(np.max(np.asarray(width))))
  index, value = np.asarray(index)[:, :, :width], np.asarray(value)[:, :, :width]
  logging.info("rerank: V rows of up to %d items after query expansion (mean %.1f)", width,
               float((index < N).sum(axis=2).mean()))
  total = block * place.devices
  pad3 = lambda x, v: np.concatenate(
      [x, np.full((x.shape[0], total - N, x.shape[2]), v, x.dtype)], axis=1) if total > N else x
  timer.add("weights and query expansion", time.time() - start_time)
  l_args = (place.shard_columns(pad3(index, N)), place.shard_columns(pad3(value, 0.0)),
            place.put(index[:, :num_queries]))
  lists = timer.compile("inverted index", column_lists_kernel(place.mesh, len(kinds), N),
                        *l_args)
  start_time = time.time()
  item, weight, start, terms = lists(*l_args)
  terms = common.host(terms)
  timer.add("inverted index", time.time() - start_time)
  return RerankInputs(QueryRows(row_max[:, :num_queries], index[:, :num_queries],
                                value[:, :num_queries]),
                      InvertedIndex(item, weight, start), terms, cols, block, N)
