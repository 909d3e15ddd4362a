"""The neighbour pass of re-ranking: every item's k nearest items among all, on the mesh.

One pass over the (Q+G) x (Q+G) score matrix in square tiles, each unordered pair of
tiles once (the matrix is symmetric), gives every score kind's neighbour lists and
row maxima at once, one matmul per tile pair. Nothing larger than a tile is held.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jreid import progress as progress_lib
from jreid import records as records_lib
from jreid.evaluation import common

AXIS = common.AXIS


class NeighbourState(NamedTuple):
  """Every item's neighbour list so far, sharded over the mesh (item-major), per kind."""
  distance: jax.Array  # float32 [kinds, devices L, k], ascending (+inf: empty)
  index: jax.Array     # int32 [kinds, devices L, k] (common.EMPTY_INDEX: empty)
  row_max: jax.Array   # float32 [kinds, devices L]: the largest distance seen


def tile_nearest(dist, valid, k, first):
  """Each row's min(k, columns) nearest valid columns of a [rows, columns] distance tile:
  (distances, global indices = first + column); +inf for invalid columns."""
  value, index = jax.lax.top_k(jnp.where(valid[None, :], -dist, -jnp.inf),
                               min(k, dist.shape[1]))
  return -value, (index + first).astype(jnp.int32)


def tile_max(dist, valid):
  """Each row's largest distance to a valid column of the tile (-inf if none)."""
  return jnp.where(valid[None, :], dist, -jnp.inf).max(axis=1)


def neighbour_kernel(mesh, kinds, k, tile, tiles_per_device, bin_width, fusion):
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

  Returns:
    (row tile int32 [], ``common.Columns``, item valid bool [devices L], ST factor
    table, ``NeighbourState``) -> the updated ``NeighbourState``.
  """
  n = tiles_per_device * mesh.size

  def body(row_tile, cols: common.Columns, item_valid, table, state: NeighbourState):
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
        best, state = carry
        take = lambda x: jax.lax.dynamic_slice_in_dim(x, j * tile, tile, axis=0)
        col_f, col_c, col_t, col_valid = (take(cols.features), take(cols.cameras),
                                          take(cols.times), take(item_valid))
        cosine = jnp.dot(row_f, col_f.T, precision=jax.lax.Precision.HIGHEST,
                         preferred_element_type=jnp.float32)
        off_diagonal = col_tile != row_tile
        col_first = col_tile * tile
        rows, cols_out = [], []
        for r, kind in enumerate(kinds):
          # Rows of the tile (row items on the query side).
          dist = 2.0 - 2.0 * common.kind_scores(kind, cosine, table, bin_width, fusion,
                                                row_c[:, None], row_t[:, None],
                                                col_c[None, :], col_t[None, :])
          found_d, found_i = tile_nearest(dist, col_valid, k, col_first)
          d, i = common.merge_nearest((best.distance[r], found_d), (best.index[r], found_i), k)
          rows.append(NeighbourState(d, i, jnp.maximum(best.row_max[r],
                                                       tile_max(dist, col_valid))))
          # Columns of the tile (column items on the query side).
          if kind == "visual":
            dist_t = dist.T
          else:  # the ST factor is not symmetric at equal times: scored again
            dist_t = 2.0 - 2.0 * common.kind_scores(kind, cosine.T, table, bin_width, fusion,
                                                    col_c[:, None], col_t[:, None],
                                                    row_c[None, :], row_t[None, :])
          found_d, found_i = tile_nearest(dist_t, row_valid, k, row_first)
          old = NeighbourState(*(take(x[r]) for x in state))
          d, i = common.merge_nearest((old.distance, found_d), (old.index, found_i), k)
          new = NeighbourState(d, i, jnp.maximum(old.row_max, tile_max(dist_t, row_valid)))
          # The diagonal tile's pairs were all seen by its rows.
          cols_out.append(NeighbourState(*(
              jax.lax.dynamic_update_slice_in_dim(x[r], jnp.where(off_diagonal, a, b),
                                                  j * tile, axis=0)
              for x, a, b in zip(state, new, old))))
        stack = lambda lists: NeighbourState(*(jnp.stack(x) for x in zip(*lists)))
        return stack(rows), stack(cols_out)

      return jax.lax.cond(needed, update, lambda c: c, carry)

    num_kinds = len(kinds)
    best = NeighbourState(jnp.full((num_kinds, tile, k), jnp.inf, jnp.float32),
                          jnp.full((num_kinds, tile, k), common.EMPTY_INDEX, jnp.int32),
                          jnp.full((num_kinds, tile), -jnp.inf, jnp.float32))
    best, state = jax.lax.fori_loop(0, tiles_per_device, visit, (best, state))
    # What the row tile found on every device, folded into its owner's state.
    gather = lambda x: jax.lax.all_gather(x, AXIS, axis=2, tiled=True)
    best_d, best_i = common.merge_nearest((gather(best.distance),), (gather(best.index),), k)
    best_max = jax.lax.pmax(best.row_max, AXIS)

    def fold(state):
      old = NeighbourState(*(jax.lax.dynamic_slice_in_dim(x, local_row, tile, axis=1)
                             for x in state))
      d, i = common.merge_nearest((old.distance, best_d), (old.index, best_i), k)
      new = (d, i, jnp.maximum(old.row_max, best_max))
      return NeighbourState(*(jax.lax.dynamic_update_slice_in_dim(x, y, local_row, axis=1)
                              for x, y in zip(state, new)))

    return jax.lax.cond(mine, fold, lambda s: s, state)

  state = NeighbourState(*(P(None, AXIS),) * 3)
  return jax.shard_map(body, mesh=mesh,
                       in_specs=(P(), common.COLUMNS_SPEC, P(AXIS), P(), state),
                       out_specs=state, check_vma=False)


def neighbour_pass(place: common.Placement, timer: common.Timer, kinds, cols: common.Columns,
                   num_items: int, k: int, tile: int, table, bin_width: int, fusion
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Every item's k nearest items and row maximum, per kind: (int32 [kinds, N, k],
  float32 [kinds, N]) on the host, from ``neighbour_kernel`` over the column tiles."""
  N = num_items
  devices = place.devices
  total = cols.cameras.shape[0]
  tiles_per_device = total // devices // tile
  item_valid = place.shard_rows(records_lib.pad_rows(np.ones(N, bool), total, False))
  state = jax.jit(lambda: NeighbourState(
      jnp.full((len(kinds), total, k), jnp.inf, jnp.float32),
      jnp.full((len(kinds), total, k), common.EMPTY_INDEX, jnp.int32),
      jnp.full((len(kinds), total), -jnp.inf, jnp.float32)),
                  out_shardings=NeighbourState(*(place.named(P(None, AXIS)),) * 3))()
  num_tiles = tiles_per_device * devices
  row_tile = lambda i: place.put(np.int32(i))
  kernel = timer.compile("neighbour pass", neighbour_kernel(
      place.mesh, kinds, k, tile, tiles_per_device, bin_width, fusion), row_tile(0), cols,
      item_valid, table, state, donate_argnums=(4,))
  logging.info("rerank: neighbour pass over %d x %d tiles of %d items (%d tile matmuls, "
               "half of the square)", num_tiles, num_tiles, tile,
               num_tiles * (num_tiles + 1) // 2)
  progress = progress_lib.Progress(f"rerank neighbours ({'+'.join(kinds)})", num_tiles,
                                   "row tiles")
  start_time = time.time()
  for i in range(num_tiles):
    state = kernel(row_tile(i), cols, item_valid, table, state)
    jax.block_until_ready(state)  # a row tile is half a row of tile matmuls: seconds at scale
    progress.update(i + 1)
  progress.finish()
  replicate = jax.jit(lambda x: x, out_shardings=place.copies)
  neighbours = common.host(replicate(state.index))[:, :N]
  row_max = common.host(replicate(state.row_max))[:, :N]
  timer.add("neighbour pass", time.time() - start_time)
  return neighbours, row_max
