"""Query x gallery evaluation on the device mesh: visual, ST-fused and re-ranked rankings.

The gallery (with re-ranking: every item, queries first) is split over the
``data`` axis of the mesh, every device of every process holding a contiguous
block of items; queries come in chunks that every device sees whole. Each kernel
works on score tiles and merges what the devices found with one collective:
neighbour lists by the k smallest of the devices' candidates, row maxima by a
max, good-item scores by a max and negative counts by a sum (``jreid.metrics``).
So the metrics do not depend on the number of devices, and nothing quadratic in
Q + G is ever held whole: every tile is bounded by ``budget_elements``.

With re-ranking the work is shared: one pass over the (Q+G) x (Q+G) cosine
matrix in square tiles, each unordered pair of tiles once (the matrix is
symmetric), gives the visual and the joint neighbour lists and row maxima at once
(one matmul per tile pair); one last pass over the query x gallery tiles gives every
requested method's ranks from one matmul (visual, ST, and both re-ranked with
their Jaccard distances). In between, fixed-width sparse kernels (``jreid.rerank``)
build the expansion sets, V, the query expansion and the inverted index. Each
kernel is compiled once per call, with one shape (the last chunk is padded); the
log gives compilation and run time apart.

Methods are named in ``METHODS``; adding one is one entry there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import resource
import time
from typing import Callable, NamedTuple, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jreid import metrics
from jreid import progress as progress_lib
from jreid import records as records_lib
from jreid import rerank as rerank_lib
from jreid import scoring
from jreid import sharding

Records = records_lib.Records
RerankParams = rerank_lib.RerankParams
AXIS = sharding.DATA_AXIS


@dataclasses.dataclass(frozen=True)
class Method:
  """One ranking: ``score`` is the score kind ("visual": cosine; "st": cosine fused with
  the ST prior); ``rerank`` applies k-reciprocal re-ranking to that kind's distance."""
  score: str
  rerank: bool = False

  @property
  def st(self) -> bool:
    return self.score == "st"


METHODS: dict[str, Method] = {
    "visual": Method("visual"),
    "st": Method("st"),
    "visual_rerank": Method("visual", rerank=True),
    "st_rerank": Method("st", rerank=True),
}
SCORE_KINDS = ("visual", "st")


@dataclasses.dataclass(frozen=True)
class TopItems:
  """Each query's k best gallery items by one score kind, best first, ties to the lower
  gallery index, with the Market-1501 protocol's junk left out (gallery id -1, and
  the query's own id in the query's camera), as ``search.top_k(leave_out_junk=True)``.

  Attributes:
    index: int64 [Q, k] gallery rows.
    score: float32 [Q, k] the ``kind`` score (-inf: junk, only when fewer than k
      gallery items are left).
    visual: float32 [Q, k] cosine similarity.
    kind: "st" (the joint score) or "visual".
  """
  index: np.ndarray
  score: np.ndarray
  visual: np.ndarray
  kind: str

# XLA's GPU autotuning level for these kernels (None: XLA's default). Their only
# matmuls are plain float32 GEMMs, whose default cuBLAS choice is what autotuning
# finds anyway, while autotuning cost most of the cold start on an H200 (the whole
# job 78.9 s -> 19.6 s with level 0, issue 12); the sparse kernels have nothing to
# tune. Not measured here (no GPU in this task).
GPU_AUTOTUNE_LEVEL: int | None = 0


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
  good = valid & ~same_cam & (gallery_ids[cand] != records_lib.JUNK_ID)
  junk = valid & same_cam
  return (np.where(good, cand, -1).astype(np.int32), np.where(junk, cand, -1).astype(np.int32))


def _kind_scores(kind: str, cosine, st_factors, bin_width, fusion, q_cameras, q_times,
                 g_cameras, g_times):
  """Scores (larger is better) of one kind from cosine scores of any broadcastable shape;
  ``st_factors`` is ``scoring.st_factor_table`` of the ST table."""
  if kind == "visual":
    return cosine
  factors = scoring.pair_st_factors(st_factors, bin_width, q_cameras, q_times, g_cameras,
                                    g_times)
  return scoring.joint_scores_from_factors(cosine, factors, fusion)


class _Timer:
  """Compilation and run time of the kernels of one evaluation, logged apart."""

  def __init__(self):
    self.compile_s = 0.0
    self.run_s: dict[str, float] = {}

  def compile(self, name: str, fn: Callable, *args, donate_argnums=()):
    start = time.time()
    lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
    compiled = None
    if jax.default_backend() == "gpu" and GPU_AUTOTUNE_LEVEL is not None:
      try:
        compiled = lowered.compile(
            compiler_options={"xla_gpu_autotune_level": GPU_AUTOTUNE_LEVEL})
      except Exception as e:  # pylint: disable=broad-except  (an XLA without the option)
        logging.warning("evaluate: compiling %s with xla_gpu_autotune_level=%s failed (%s); "
                        "compiling with the defaults", name, GPU_AUTOTUNE_LEVEL, e)
    if compiled is None:
      compiled = lowered.compile()
    spent = time.time() - start
    self.compile_s += spent
    logging.info("evaluate: compiled %s in %.2f s", name, spent)
    return compiled

  def add(self, name: str, seconds: float):
    self.run_s[name] = self.run_s.get(name, 0.0) + seconds
    logging.info("evaluate: %s took %.2f s (peak RSS so far %.0f MB)", name, seconds,
                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class _Placement:
  """Host arrays -> global arrays on the mesh (every process passes the same values)."""

  def __init__(self, mesh):
    self.mesh = mesh
    self.devices = mesh.size
    self.copies = sharding.replicated(mesh)

  def named(self, spec=None) -> jax.sharding.NamedSharding:
    """The mesh's sharding of ``spec`` (None: replicated)."""
    return sharding.named(self.mesh, spec)

  def put(self, x, spec=None):
    x = np.asarray(x)
    target = self.named(spec)
    if jax.process_count() == 1:
      return jax.device_put(x, target)  # on CPU with one device: aliases the host array
    return jax.make_array_from_callback(x.shape, target, lambda index: x[index])

  def shard_rows(self, x):
    return self.put(x, P(AXIS))

  def shard_columns(self, x):
    return self.put(x, P(None, AXIS))


def _host(x: jax.Array) -> np.ndarray:
  """A replicated output, on this process's host."""
  return np.asarray(x.addressable_data(0))


class _Columns(NamedTuple):
  """The items split over the mesh (columns of every score tile), padded to devices x L."""
  features: jax.Array   # float32 [devices L, D]
  cameras: jax.Array    # int32 [devices L], 0-based
  times: jax.Array      # int32 [devices L]
  ranked: jax.Array     # bool [devices L]: a gallery item (not a query item, not padding)
  junk: jax.Array       # bool [devices L]: gallery id -1 (junk for every query)


def _columns(place: _Placement, features, cameras, times, ranked, junk,
             block: int | None = None) -> tuple[_Columns, int]:
  """The items as sharded columns, ``block`` (default: as few as fit) per device."""
  n = len(cameras)
  block = block or -(-n // place.devices)
  total = block * place.devices
  pad = lambda x, v: records_lib.pad_rows(x, total, v)
  if total != n:
    features = pad(np.asarray(features, np.float32), 0.0)
  cols = _Columns(place.shard_rows(np.asarray(features, np.float32)),
                  place.shard_rows(pad(np.asarray(cameras, np.int32), 0)),
                  place.shard_rows(pad(np.asarray(times, np.int32), 0)),
                  place.shard_rows(pad(np.asarray(ranked, bool), False)),
                  place.shard_rows(pad(np.asarray(junk, bool), False)))
  return cols, block


def _block_offset(block: int):
  return jax.lax.axis_index(AXIS).astype(jnp.int32) * block


# ----------------------------------------------------------------------------------------
# Kernels (built per call with their static settings; run under shard_map).


def square_tiles(items_per_device: int, k: int, budget_elements: int) -> tuple[int, int]:
  """(tile T, block L) of the symmetric neighbour pass: T x T score tiles within the
  budget (T >= k, a multiple of 8), L = the per-device block, a multiple of T."""
  largest = max(k, 8, math.isqrt(max(1, budget_elements)))
  tiles = max(1, -(-items_per_device // largest))
  tile = max(k, -(-(-(-items_per_device // tiles)) // 8) * 8)
  return tile, tiles * tile


# An empty slot of a neighbour list: index int32 max, distance +inf.
_EMPTY_INDEX = np.iinfo(np.int32).max


def _merge_nearest(dists, indices, k, payloads=()):
  """The k smallest (distance, index) pairs of each row over candidate lists,
  lexicographically (ties go to the lower index).

  Args:
    dists, indices: sequences of float32 / int32 [..., M_l] lists, joined on the last axis.
    payloads: sequences of [..., M_l] lists that travel with their pairs.
  Returns:
    (float32 [..., k], int32 [..., k], then each payload [..., k]).
  """
  operands = tuple(jnp.concatenate(x, axis=-1) for x in (dists, indices, *payloads))
  operands = jax.lax.sort(operands, dimension=operands[0].ndim - 1, num_keys=2)
  return tuple(x[..., :k] for x in operands)


def _neighbour_kernel(mesh, kinds, k, tile, tiles_per_device, bin_width, fusion):
  """One row tile of the symmetric neighbour pass: updates every item's k nearest items
  and its row maximum, held on the device that owns the item.

  d(i, j) and d(j, i) come from one cosine tile: the tiles of the (Q+G) x (Q+G)
  matrix are visited once per unordered pair (row tile I takes the column tiles J
  at cyclic distance 0 < J - I < n / 2, its own tile, and the opposite one when
  I < J), so each device does half the matmuls of a full pass, whatever its block.
  A visited tile updates the row items' lists (found by its rows) and the column
  items' lists (by its columns: the transposed tile; the joint score scored again
  with the column item on the query side, since the reference's ST factor is not
  symmetric at equal times). Lists merge by the lexicographic (distance, index) order, so
  ties go to the lower index whatever the visiting order.

  State (sharded over the mesh, item-major): distances, indices float32 / int32
  [kinds, L, k] (+inf / int32 max when empty) and row maxima [kinds, L].
  """
  n = tiles_per_device * mesh.size

  def body(row_tile, cols: _Columns, item_valid, table, state_d, state_i, state_max):
    device = jax.lax.axis_index(AXIS).astype(jnp.int32)
    owner = row_tile // tiles_per_device
    local_row = (row_tile % tiles_per_device) * tile
    mine = device == owner
    # The row tile, broadcast from its owner (exact: the others add zeros).
    take_rows = lambda x: jax.lax.dynamic_slice_in_dim(x, local_row, tile, axis=0)
    share = lambda x: jax.lax.psum(jnp.where(mine, take_rows(x), jnp.zeros((), x.dtype)), AXIS)
    row_f = share(cols.features)
    row_c, row_t = share(cols.cameras), share(cols.times)
    row_valid = share(item_valid.astype(jnp.int32)) > 0
    row_first = row_tile * tile

    def visit(j, carry):
      col_tile = device * tiles_per_device + j
      delta = (col_tile - row_tile) % n
      needed = (delta == 0) | (2 * delta < n) | ((2 * delta == n) & (row_tile < col_tile))

      def update(carry):
        best_d, best_i, best_max, state_d, state_i, state_max = carry
        take = lambda x: jax.lax.dynamic_slice_in_dim(x, j * tile, tile, axis=0)
        col_f, col_c, col_t, col_valid = (take(cols.features), take(cols.cameras),
                                          take(cols.times), take(item_valid))
        cosine = jnp.dot(row_f, col_f.T, precision=jax.lax.Precision.HIGHEST,
                         preferred_element_type=jnp.float32)
        off_diagonal = col_tile != row_tile
        col_first = col_tile * tile
        out = [[], [], [], [], [], []]
        for r, kind in enumerate(kinds):
          # Rows of the tile (row items on the query side).
          dist = 2.0 - 2.0 * _kind_scores(kind, cosine, table, bin_width, fusion,
                                          row_c[:, None], row_t[:, None], col_c[None, :],
                                          col_t[None, :])
          found_d, found_i = _tile_nearest(dist, col_valid, k, col_first)
          d, i = _merge_nearest((best_d[r], found_d), (best_i[r], found_i), k)
          out[0].append(d)
          out[1].append(i)
          out[2].append(jnp.maximum(best_max[r], _tile_max(dist, col_valid)))
          # Columns of the tile (column items on the query side).
          if kind == "visual":
            dist_t = dist.T
          else:  # the ST factor is not symmetric at equal times: scored again
            dist_t = 2.0 - 2.0 * _kind_scores(kind, cosine.T, table, bin_width, fusion,
                                              col_c[:, None], col_t[:, None],
                                              row_c[None, :], row_t[None, :])
          found_d, found_i = _tile_nearest(dist_t, row_valid, k, row_first)
          old_d, old_i = take(state_d[r]), take(state_i[r])
          d, i = _merge_nearest((old_d, found_d), (old_i, found_i), k)
          old_max = take(state_max[r])
          # The diagonal tile's pairs were all seen by its rows.
          put = lambda x, new, old: jax.lax.dynamic_update_slice_in_dim(
              x, jnp.where(off_diagonal, new, old), j * tile, axis=0)
          out[3].append(put(state_d[r], d, old_d))
          out[4].append(put(state_i[r], i, old_i))
          out[5].append(put(state_max[r], jnp.maximum(old_max, _tile_max(dist_t, row_valid)),
                            old_max))
        return tuple(jnp.stack(x) for x in out)

      return jax.lax.cond(needed, update, lambda c: c, carry)

    num_kinds = len(kinds)
    carry = (jnp.full((num_kinds, tile, k), jnp.inf, jnp.float32),
             jnp.full((num_kinds, tile, k), _EMPTY_INDEX, jnp.int32),
             jnp.full((num_kinds, tile), -jnp.inf, jnp.float32), state_d, state_i, state_max)
    best_d, best_i, best_max, state_d, state_i, state_max = jax.lax.fori_loop(
        0, tiles_per_device, visit, carry)
    # What the row tile found on every device, folded into its owner's state.
    best_d, best_i = _merge_nearest((jax.lax.all_gather(best_d, AXIS, axis=2, tiled=True),),
                                    (jax.lax.all_gather(best_i, AXIS, axis=2, tiled=True),), k)
    best_max = jax.lax.pmax(best_max, AXIS)

    def fold(state):
      state_d, state_i, state_max = state
      old_d = jax.lax.dynamic_slice_in_dim(state_d, local_row, tile, axis=1)
      old_i = jax.lax.dynamic_slice_in_dim(state_i, local_row, tile, axis=1)
      old_max = jax.lax.dynamic_slice_in_dim(state_max, local_row, tile, axis=1)
      d, i = _merge_nearest((old_d, best_d), (old_i, best_i), k)
      return (jax.lax.dynamic_update_slice_in_dim(state_d, d, local_row, axis=1),
              jax.lax.dynamic_update_slice_in_dim(state_i, i, local_row, axis=1),
              jax.lax.dynamic_update_slice_in_dim(state_max, jnp.maximum(old_max, best_max),
                                                  local_row, axis=1))

    return jax.lax.cond(mine, fold, lambda s: s, (state_d, state_i, state_max))

  cols_spec = _Columns(*(P(AXIS),) * 5)
  state = P(None, AXIS)
  return jax.shard_map(body, mesh=mesh,
                       in_specs=(P(), cols_spec, P(AXIS), P(), state, state, state),
                       out_specs=(state, state, state), check_vma=False)


def _tile_nearest(dist, valid, k, first):
  """Each row's min(k, columns) nearest valid columns of a [rows, columns] distance tile:
  (distances, global indices = first + column); +inf for invalid columns."""
  value, index = jax.lax.top_k(jnp.where(valid[None, :], -dist, -jnp.inf),
                               min(k, dist.shape[1]))
  return -value, (index + first).astype(jnp.int32)


def _tile_max(dist, valid):
  """Each row's largest distance to a valid column of the tile (-inf if none)."""
  return jnp.where(valid[None, :], dist, -jnp.inf).max(axis=1)


def _pair_kernel(mesh, kinds, block, bin_width, fusion, step_rows):
  """d(i, m) for rows i [R] and their members m [R, W] -> float32 [kinds, R, W].

  The member features are gathered ``step_rows`` rows at a time (R a multiple): on CPU
  a gather of the whole chunk writes a fresh buffer of R W D floats on every call,
  and its page faults, not the arithmetic, took the time (4.8 s against 0.8 s at
  Market scale).
  """

  def body(row_f, row_c, row_t, members, member_c, member_t, features, table):
    offset = _block_offset(block)
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
        2.0 - 2.0 * _kind_scores(kind, cosine, table, bin_width, fusion, row_c[:, None],
                                 row_t[:, None], member_c, member_t) for kind in kinds])

  return jax.shard_map(body, mesh=mesh, in_specs=(P(),) * 6 + (P(AXIS), P()),
                       out_specs=P(), check_vma=False)


def _column_lists_kernel(mesh, num_kinds, num_items):
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


def _ranks_kernel(mesh, methods, block, tile, first_gallery, num_gallery, num_items,
                  num_terms, lambda_value, bin_width, fusion, top_k=0, top_kind="visual"):
  """Query chunk [c] x gallery -> good-item ranks [methods, c, K] of every method, and
  with ``top_k`` each query's best gallery items by ``top_kind`` (``TopItems``).

  One matmul per column tile serves every method and the top items. With
  ``tile < block`` (no re-ranking) the tiles are swept twice: the good items' scores
  first, the negatives (and the top items) then, so that both come from the very same
  score tiles.
  """
  kinds = sorted({METHODS[m].score for m in methods} | ({top_kind} if top_k else set()),
                 key=SCORE_KINDS.index)
  rerank_kinds = [k for k in SCORE_KINDS
                  if any(METHODS[m].rerank and METHODS[m].score == k for m in methods)]
  num_tiles = -(-block // tile)
  top_width = min(top_k, tile)

  def body(q_f, q_c, q_t, good, junk, q_row_max, q_index, q_value, cols: _Columns,
           item, weight, start, table):
    offset = _block_offset(block)
    jaccard = {}
    for r, kind in enumerate(rerank_kinds):
      jaccard[kind], used = rerank_lib.jaccard_distance(
          q_index[r], q_value[r], item[r], weight[r], start[r], block, num_items, num_terms)
      jaccard[kind + "_terms"] = used

    def tile_scores(t):
      begin = jnp.minimum(t * tile, block - tile)
      take = lambda x: jax.lax.dynamic_slice_in_dim(x, begin, tile, axis=0)
      f, c, tm = take(cols.features), take(cols.cameras), take(cols.times)
      # Columns before t * tile were already seen (the last tile is shifted back).
      valid = take(cols.ranked) & (begin + jnp.arange(tile) >= t * tile)
      cosine = jnp.dot(q_f, f.T, precision=jax.lax.Precision.HIGHEST,
                       preferred_element_type=jnp.float32)
      scores = {kind: _kind_scores(kind, cosine, table, bin_width, fusion, q_c[:, None],
                                   q_t[:, None], c[None, :], tm[None, :]) for kind in kinds}
      out = []
      for name in methods:
        method = METHODS[name]
        s = scores[method.score]
        if method.rerank:
          r = rerank_kinds.index(method.score)
          original = (2.0 - 2.0 * s) / q_row_max[r][:, None]
          jac = jax.lax.dynamic_slice_in_dim(jaccard[method.score], begin, tile, axis=1)
          s = -(jac * (1.0 - lambda_value) + original * lambda_value)
        out.append(s)
      return (out, offset - first_gallery + begin, valid, take(cols.junk), scores.get(top_kind),
              cosine)

    # Stacks over methods (there may be none: the top items alone).
    stack = lambda xs, empty: jnp.stack(xs) if xs else empty
    no_scores = jnp.full((len(methods),) + good.shape, -jnp.inf, jnp.float32)

    def good_scores(t, best):
      out, gallery_offset, valid, *_ = tile_scores(t)
      return stack([jnp.maximum(b, metrics.gather_good_scores(s, gallery_offset, valid, good))
                    for s, b in zip(out, best)], best)

    best = jax.lax.fori_loop(0, num_tiles, good_scores, no_scores) if num_tiles > 1 else None
    hist = jnp.zeros((len(methods), good.shape[0], good.shape[1] + 1), jnp.int32)

    def count(t, carry):
      hist, best, top = carry
      out, gallery_offset, valid, junk_cols, top_scores, cosine = tile_scores(t)
      if num_tiles == 1:
        best = jax.lax.pmax(stack([metrics.gather_good_scores(s, gallery_offset, valid, good)
                                   for s in out], no_scores), AXIS)
      new = []
      for m, s in enumerate(out):
        sorted_scores, sorted_index = metrics.sort_good_items(best[m], good, num_gallery)
        new.append(hist[m] + metrics.negatives_histogram(
            s, gallery_offset, valid, junk_cols, good, junk, sorted_scores, sorted_index))
      if top_k:
        order, index, top_cosine = top
        new_order, new_index, new_cosine = _tile_top(top_scores, cosine, gallery_offset, valid,
                                                     junk_cols, junk, top_width)
        top = _merge_nearest((order, new_order), (index, new_index), top_k,
                             ((top_cosine, new_cosine),))
      return stack(new, hist), best, top

    top = tuple(jnp.full(good.shape[:1] + (top_k,), v, dtype)
                for v, dtype in ((jnp.inf, jnp.float32), (_EMPTY_INDEX, jnp.int32),
                                 (0.0, jnp.float32)))
    if num_tiles == 1:
      hist, _, top = count(0, (hist, None, top))
    else:
      best = jax.lax.pmax(best, AXIS)
      hist, _, top = jax.lax.fori_loop(0, num_tiles, count, (hist, best, top))
    hist = jax.lax.psum(hist, AXIS)
    ranks = stack([metrics.ranks_from_histogram(h, good, num_gallery) for h in hist],
                  jnp.zeros((0,) + good.shape, jnp.int32))
    used = jnp.stack([jaccard[k + "_terms"] for k in rerank_kinds]) if rerank_kinds else (
        jnp.zeros((0,), jnp.int32))
    # The devices' top items, merged (every device ends with the same lists).
    if top_k:
      order, index, top_cosine = (jax.lax.all_gather(x, AXIS, axis=1, tiled=True) for x in top)
      top = _merge_nearest((order,), (index,), top_k, ((top_cosine,),))
    return ranks, jax.lax.pmax(used, AXIS), top

  cols_spec = _Columns(*(P(AXIS),) * 5)
  lists = P(None, AXIS)
  return jax.shard_map(body, mesh=mesh,
                       in_specs=(P(),) * 8 + (cols_spec, lists, lists, lists, P()),
                       out_specs=(P(), P(), (P(),) * 3), check_vma=False)


# The order key (-score) of a junk item among the top items: after every real item,
# before columns that are no gallery item (+inf), so that with fewer than k items left
# the lists end with junk items by gallery index, as ``search.top_k`` gives them.
_JUNK_ORDER = np.float32(np.finfo(np.float32).max)


def _tile_top(scores, cosine, gallery_offset, valid, junk_cols, junk, width):
  """Each query's ``width`` best gallery items of a score tile, junk left out.

  Args:
    scores, cosine: float32 [c, L] (column l is gallery item ``gallery_offset + l``).
    valid, junk_cols: bool [L]: a gallery item of this tile; gallery id -1.
    junk: int32 [c, J] each query's same-id same-camera gallery items (padding outside).
  Returns:
    (order key, gallery index, cosine) [c, width], by the order key ascending (what
    ``_merge_nearest`` merges): -score, ``_JUNK_ORDER`` for junk, +inf for columns
    that are no gallery item (index ``_EMPTY_INDEX``).
  """
  c, L = scores.shape
  rows = jnp.arange(c)[:, None]
  local = jnp.where((junk >= gallery_offset) & (junk < gallery_offset + L),
                    junk - gallery_offset, L)
  is_junk = jnp.zeros((c, L), bool).at[rows, local].set(True, mode="drop") | junk_cols[None, :]
  order = jnp.where(valid[None, :], jnp.where(is_junk, _JUNK_ORDER, -scores), jnp.inf)
  negated, position = jax.lax.top_k(-order, width)  # the smallest order keys, lower index first
  index = jnp.where(negated > -jnp.inf, gallery_offset + position, _EMPTY_INDEX)
  return -negated, index.astype(jnp.int32), jnp.take_along_axis(cosine, position, axis=1)


# ----------------------------------------------------------------------------------------
# Re-ranking: neighbours, expansion sets, V, query expansion.


def _neighbour_pass(place, timer, kinds, cols, num_items, k, tile, table, bin_width, fusion):
  """Every item's k nearest items and row maximum, per kind: (int32 [kinds, N, k],
  float32 [kinds, N]) on the host, from ``_neighbour_kernel`` over the column tiles."""
  N = num_items
  devices = place.devices
  total = cols.cameras.shape[0]
  tiles_per_device = total // devices // tile
  item_valid = place.shard_rows(records_lib.pad_rows(np.ones(N, bool), total, False))
  state = jax.jit(lambda: (jnp.full((len(kinds), total, k), jnp.inf, jnp.float32),
                           jnp.full((len(kinds), total, k), _EMPTY_INDEX, jnp.int32),
                           jnp.full((len(kinds), total), -jnp.inf, jnp.float32)),
                  out_shardings=(place.named(P(None, AXIS)),) * 3)()
  num_tiles = tiles_per_device * devices
  row_tile = lambda i: place.put(np.int32(i))
  kernel = timer.compile("neighbour pass", _neighbour_kernel(
      place.mesh, kinds, k, tile, tiles_per_device, bin_width, fusion), row_tile(0), cols,
      item_valid, table, *state, donate_argnums=(4, 5, 6))
  logging.info("rerank: neighbour pass over %d x %d tiles of %d items (%d tile matmuls, "
               "half of the square)", num_tiles, num_tiles, tile,
               num_tiles * (num_tiles + 1) // 2)
  progress = progress_lib.Progress(f"rerank neighbours ({'+'.join(kinds)})", num_tiles,
                                   "row tiles")
  start_time = time.time()
  for i in range(num_tiles):
    state = kernel(row_tile(i), cols, item_valid, table, *state)
    if i % 4 == 3 or i == num_tiles - 1:
      jax.block_until_ready(state)
      progress.update(i + 1)
  progress.finish()
  replicate = jax.jit(lambda x: x, out_shardings=place.copies)
  neighbours = _host(replicate(state[1]))[:, :N]
  row_max = _host(replicate(state[2]))[:, :N]
  timer.add("neighbour pass", time.time() - start_time)
  return neighbours, row_max


def _members_union(neighbours, *, k1, num_items):
  """Per kind the expansion sets [kinds, N, M], and their union per item [N, kinds M]."""
  members, counts = jax.vmap(lambda nb: rerank_lib.expansion_members(nb, k1))(neighbours)
  kinds, N, M = members.shape
  union, union_counts = rerank_lib.sorted_unique_rows(
      jnp.moveaxis(members, 0, 1).reshape(N, kinds * M), num_items)
  return members, counts.max(), union, union_counts.max()


def _build_v(members, union, union_distances, row_max, neighbours, *, k2, num_items):
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


def _chunks(total: int, rows: int):
  for start in range(0, total, rows):
    yield start, min(total, start + rows)


def _rerank_inputs(place, mesh, timer, kinds, items, num_queries, table, params, bin_width,
                   fusion, budget_elements):
  """Neighbour pass + V + query expansion + inverted index, for the kinds to re-rank.

  Returns (query row maxima [kinds, Q], query V rows index/value [kinds, Q, W],
  inverted index (item, weight, start) sharded, num_terms per query [kinds, Q], cols).
  """
  features, cameras, times, ranked, junk = items
  N = len(cameras)
  k = min(N, params.k1 + 1)
  tile, block = square_tiles(-(-N // place.devices), k, budget_elements)
  cols, block = _columns(place, features, cameras, times, ranked, junk, block)
  neighbours, row_max = _neighbour_pass(place, timer, kinds, cols, N, k, tile, table,
                                        bin_width, fusion)

  members_union = timer.compile("expansion sets", functools.partial(
      _members_union, k1=params.k1, num_items=N), neighbours)
  start_time = time.time()
  members, width, union, union_width = members_union(neighbours)
  width, union_width = int(width), int(union_width)
  members, union = members[:, :, :max(1, width)], np.asarray(union)[:, :max(1, union_width)]
  logging.info("rerank: expansion sets of up to %d items (%d for the kinds together, mean %.1f)",
               width, union_width, float((union < N).sum(axis=1).mean()))
  timer.add("expansion sets", time.time() - start_time)

  # Chunks of pair_rows items, gathered in steps of step_rows (a 4 MB buffer) on CPU.
  pair_rows = records_lib.chunk_rows(N, union.shape[1] * features.shape[1], 4 * budget_elements)
  step_rows = pair_rows
  if jax.default_backend() == "cpu":
    step_rows = min(pair_rows, max(1, (1 << 20) // (union.shape[1] * features.shape[1])))
    pair_rows = -(-pair_rows // step_rows) * step_rows
  union_c = np.append(np.asarray(cameras, np.int32), 0)[union]  # N (empty slot) -> 0
  union_t = np.append(np.asarray(times, np.int32), 0)[union]
  pairs = _pair_kernel(mesh, kinds, block, bin_width, fusion, step_rows)
  union_distances = np.empty((len(kinds),) + union.shape, np.float32)
  p_pad = lambda x, s, e, v: place.put(records_lib.pad_rows(x[s:e], pair_rows, v))
  p_args = lambda s, e: (p_pad(features, s, e, 0.0), p_pad(cameras, s, e, 0),
                         p_pad(times, s, e, 0), p_pad(union, s, e, N),
                         p_pad(union_c, s, e, 0), p_pad(union_t, s, e, 0))
  pairs = timer.compile("pair distances", pairs, *p_args(0, pair_rows), cols.features, table)
  start_time = time.time()
  progress = progress_lib.Progress("rerank pair distances", N, "items")
  for s, e in _chunks(N, pair_rows):
    union_distances[:, s:e] = _host(pairs(*p_args(s, e), cols.features, table))[:, :e - s]
    progress.update(e)
  progress.finish()
  timer.add("pair distances", time.time() - start_time)

  k2 = min(params.k2, k)
  v_args = (members, jnp.asarray(union), jnp.asarray(union_distances), jnp.asarray(row_max),
            jnp.asarray(neighbours))
  build_v = timer.compile("weights and query expansion", functools.partial(
      _build_v, k2=k2, num_items=N), *v_args)
  start_time = time.time()
  index, value, width = build_v(*v_args)
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
  lists = timer.compile("inverted index", _column_lists_kernel(mesh, len(kinds), N), *l_args)
  start_time = time.time()
  item, weight, start, terms = lists(*l_args)
  terms = _host(terms)
  timer.add("inverted index", time.time() - start_time)
  return (row_max[:, :num_queries], index[:, :num_queries], value[:, :num_queries],
          (item, weight, start), terms, cols, block)


# ----------------------------------------------------------------------------------------
# Public entry points.


def nearest_items(features: np.ndarray, cameras: np.ndarray, times: np.ndarray,
                  st_table: np.ndarray | None, *, k: int, bin_width: int,
                  fusion: scoring.FusionParams = scoring.FusionParams(),
                  kinds: Sequence[str] = SCORE_KINDS, budget_elements: int = 1 << 22,
                  mesh=None) -> tuple[np.ndarray, np.ndarray]:
  """The neighbour pass of re-ranking, alone: each item's k nearest items among all.

  Args:
    features: float32 [N, D] normalised; cameras (0-based), times (frames): int [N].
    st_table: float [C, C, H] ST probabilities (None: visual only).
    k: neighbours per item (<= N).
    kinds: score kinds, of ``SCORE_KINDS``.
  Returns:
    (int32 [kinds, N, k] nearest items by d(i, j) = 2 - 2 score(i, j) with i on the
    query side, ascending, ties to the lower index; float32 [kinds, N] max_j d(i, j)).
  """
  N = len(cameras)
  if not 1 <= k <= N:
    raise ValueError(f"k must be in [1, {N}], got {k}")
  unknown = [kind for kind in kinds if kind not in SCORE_KINDS]
  if unknown or not kinds:
    raise ValueError(f"kinds must be among {SCORE_KINDS}, got {tuple(kinds)}")
  if st_table is None and "st" in kinds:
    raise ValueError("the st kind needs an ST table, got None")
  mesh = mesh or sharding.make_mesh()
  place = _Placement(mesh)
  table = place.put(np.zeros((1, 1, 1), np.float32) if st_table is None else np.asarray(
      scoring.st_factor_table(np.asarray(st_table, np.float32), fusion)))
  tile, block = square_tiles(-(-N // place.devices), k, budget_elements)
  cols, _ = _columns(place, np.asarray(features, np.float32), cameras, times,
                     np.ones(N, bool), np.zeros(N, bool), block)
  return _neighbour_pass(place, _Timer(), tuple(kinds), cols, N, k, tile, table, bin_width,
                         fusion)


def method_ranks(query: Records, gallery: Records, st_table: np.ndarray | None, *,
                 bin_width: int, fusion: scoring.FusionParams, methods: Sequence[str],
                 rerank: RerankParams = RerankParams(), budget_elements: int = 1 << 22,
                 top_k: int = 0, mesh=None
                 ) -> tuple[dict[str, np.ndarray], TopItems | None]:
  """Good-item ranks of every query under each method (see ``evaluate``), and with
  ``top_k`` each query's best gallery items from the same score tiles.

  Args:
    top_k: gallery items per query of ``TopItems`` (at most G), by the joint score
      with an ST table, else by the visual one; 0: none.
  Returns:
    ({method: int [Q, K]} 0-based ranks after junk removal, ascending per row, padded
    with ``INT32_MAX`` (``metrics.retrieval_metrics`` reads them), ``TopItems`` or None).
  """
  methods = list(methods)
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"unknown evaluation methods {unknown}; known: {sorted(METHODS)}")
  if len(set(methods)) != len(methods):
    raise ValueError(f"methods named twice: {methods}")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0, got {top_k}")
  if not methods and not top_k:
    return {}, None
  if st_table is None and any(METHODS[m].score == "st" for m in methods):
    raise ValueError(f"methods {methods} need an ST table, got None")
  for side, r in (("query", query), ("gallery", gallery)):
    if r.features is None or r.features.ndim != 2:
      raise ValueError(f"{side} records need float32 [N, D] features")
  if query.features.shape[1] != gallery.features.shape[1]:
    raise ValueError(f"query features have {query.features.shape[1]} dims but gallery "
                     f"features {gallery.features.shape[1]}")
  if budget_elements < 1:
    raise ValueError(f"budget_elements must be >= 1, got {budget_elements}")
  if len(gallery) == 0:
    raise ValueError("the gallery is empty: nothing to rank the queries against")
  top_k = min(int(top_k), len(gallery))
  top_kind = "st" if st_table is not None else "visual"
  if len(query) == 0:
    empty = lambda dtype: np.zeros((0, top_k), dtype)
    return ({m: np.zeros((0, 1), np.int64) for m in methods},
            TopItems(empty(np.int64), empty(np.float32), empty(np.float32), top_kind)
            if top_k else None)
  mesh = mesh or sharding.make_mesh()
  place = _Placement(mesh)
  timer = _Timer()
  job_start = time.time()
  Q, G = len(query), len(gallery)
  good, junk = match_lists(query.person_ids, query.cameras, gallery.person_ids, gallery.cameras)
  # The ST factor table ([1, 1, 1] zeros for visual only): every kernel takes it.
  table = place.put(np.zeros((1, 1, 1), np.float32) if st_table is None else np.asarray(
      scoring.st_factor_table(np.asarray(st_table, np.float32), fusion)))
  rerank_kinds = [k for k in SCORE_KINDS
                  if any(METHODS[m].rerank and METHODS[m].score == k for m in methods)]
  qf = np.asarray(query.features, np.float32)

  if rerank_kinds:
    # The columns are every item, queries first; only the gallery ones are ranked.
    items = (np.concatenate([qf, np.asarray(gallery.features, np.float32)]),
             np.concatenate([query.cameras, gallery.cameras]).astype(np.int32),
             np.concatenate([query.times, gallery.times]).astype(np.int32),
             np.concatenate([np.zeros(Q, bool), np.ones(G, bool)]),
             np.concatenate([np.zeros(Q, bool), gallery.person_ids == records_lib.JUNK_ID]))
    (q_row_max, q_index, q_value, (item, weight, start), terms, cols,
     block) = _rerank_inputs(place, mesh, timer, rerank_kinds, items, Q, table, rerank, bin_width,
                             fusion, budget_elements)
    first_gallery, num_items = Q, Q + G
    rows = records_lib.chunk_rows(Q, block, budget_elements)
    tile = block
    chunk_terms = max(int(terms[:, s:e].sum(axis=1).max()) for s, e in _chunks(Q, rows))
    num_terms = max(1024, -(-chunk_terms // 1024) * 1024)
    logging.info("rerank: %d Jaccard terms per chunk of %d queries at most (mean per query %.0f)",
                 num_terms, rows, float(terms.mean()))
  else:
    cols, block = _columns(place, gallery.features, gallery.cameras, gallery.times,
                           np.ones(G, bool), gallery.person_ids == records_lib.JUNK_ID)
    first_gallery, num_items, num_terms = 0, G, 1
    rows = records_lib.chunk_rows(Q, block, budget_elements)
    tile = block
    if rows < min(Q, 128):  # a big gallery: bigger query chunks, column tiles of one block
      rows = min(Q, 128)
      tile = min(block, records_lib.chunk_rows(block, rows, budget_elements))
    q_row_max = np.ones((0, Q), np.float32)
    q_index = np.zeros((0, Q, 1), np.int32)
    q_value = np.zeros((0, Q, 1), np.float32)
    empty = place.shard_columns(np.zeros((0, place.devices), np.int32))
    item, weight, start = (empty, place.shard_columns(np.zeros((0, place.devices), np.float32)),
                           empty)

  kernel = _ranks_kernel(mesh, tuple(methods), block, tile, first_gallery, G, num_items,
                         num_terms, float(rerank.lambda_value), int(bin_width), fusion, top_k,
                         top_kind)
  q_cams, q_times = np.asarray(query.cameras, np.int32), np.asarray(query.times, np.int32)

  def args(s, e):
    pad = lambda x, v: place.put(records_lib.pad_rows(x[s:e], rows, v))
    pad_k = lambda x, v: place.put(np.stack([records_lib.pad_rows(y[s:e], rows, v) for y in x])
                                   if len(x) else np.zeros((0, rows) + x.shape[2:], x.dtype))
    return (pad(qf, 0.0), pad(q_cams, 0), pad(q_times, 0), pad(good, -1), pad(junk, -1),
            pad_k(q_row_max, 1.0), pad_k(q_index, num_items), pad_k(q_value, 0.0), cols,
            item, weight, start, table)

  what = ", ".join(methods + ([f"top {top_k} by {top_kind}"] if top_k else []))
  compiled = timer.compile(f"ranks ({what})", kernel, *args(0, rows))
  ranks = np.empty((len(methods),) + good.shape, np.int64)
  top = [np.empty((Q, top_k), dtype) for dtype in (np.float32, np.int64, np.float32)]
  progress = progress_lib.Progress(f"evaluate ({what})", Q, "queries")
  start_time = time.time()
  for s, e in _chunks(Q, rows):
    out, used, found = compiled(*args(s, e))
    used = _host(used)
    if used.size and used.max() > num_terms:
      raise AssertionError(f"Jaccard terms {used.max()} exceed the {num_terms} slots")
    ranks[:, s:e] = _host(out)[:, :e - s]
    for dst, src in zip(top, found):
      dst[s:e] = _host(src)[:e - s]
    progress.update(e)
  progress.finish()
  timer.add("ranks", time.time() - start_time)
  logging.info("evaluate: %d queries x %d gallery on %d device(s), methods %s: %.2f s "
               "(compilation %.2f s; run %s)", Q, G, place.devices, what,
               time.time() - job_start, timer.compile_s,
               ", ".join(f"{k} {v:.2f} s" for k, v in timer.run_s.items()))
  order, index, visual = top
  return ({m: ranks[i] for i, m in enumerate(methods)},
          TopItems(index, np.where(order == _JUNK_ORDER, -np.inf, -order).astype(np.float32),
                   visual, top_kind) if top_k else None)


def evaluate(query: Records, gallery: Records, st_table: np.ndarray | None, *,
             bin_width: int, fusion: scoring.FusionParams = scoring.FusionParams(),
             methods: Sequence[str] = ("visual", "st"), rerank: RerankParams = RerankParams(),
             budget_elements: int = 1 << 22, max_rank: int = 100,
             mesh=None) -> dict[str, metrics.RetrievalMetrics]:
  """Retrieval metrics of each method over the whole gallery.

  Args:
    query, gallery: ``Records`` with L2-normalised float32 features
      (``scoring.l2_normalise_features``), 0-based cameras, times in frames.
    st_table: float [C, C, H] ST probabilities (0-based cameras), or None (then only
      methods without "st").
    bin_width: frames per ST bin.
    fusion: logistic smoothing constants of the joint score.
    methods: names in ``METHODS``: "visual", "st", "visual_rerank", "st_rerank".
    rerank: k1, k2, lambda of the re-ranking methods.
    budget_elements: bound on the score elements of one tile per device (chunk sizes
      come from it through ``records.chunk_rows``); lower it on a small device.
    max_rank: length of the CMC curves.
    mesh: the device mesh (``sharding.make_mesh()`` when None); the gallery is split
      over its ``data`` axis.
  Returns:
    {method: metrics}, in the order of ``methods``.
  """
  ranks, _ = method_ranks(query, gallery, st_table, bin_width=bin_width, fusion=fusion,
                          methods=methods, rerank=rerank, budget_elements=budget_elements,
                          mesh=mesh)
  return {m: metrics.retrieval_metrics(r, max_rank) for m, r in ranks.items()}
