"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) as fixed-shape device kernels.

The published algorithm (``docs/reference.md`` section 5) builds the dense
(Q+G) x (Q+G) distance matrix. Only three things of it are ever used:

1. each item's k1 + 1 nearest neighbours and its row maximum (the column
   normalisation), found by one chunked pass over the cosine scores
   (``jreid.evaluate`` runs it, visual and joint neighbours from one matmul);
2. the distances from each item to the members of its k-reciprocal expansion set
   (a few dozen), recomputed pair by pair;
3. the query x gallery block, recomputed chunk by chunk at the end.

Everything in between is sparse with a fixed bound per row, so it lives in padded
fixed-width arrays: a row of V holds at most ``expansion_width(k1)`` (index,
weight) pairs, ``num_items`` (N) marks an empty slot, and indices are sorted
ascending. The kernels here are pure functions of such arrays:

  expansion_members   neighbours [N, K] -> R*(i) as sorted index rows [N, M]
  weights             distances to the members -> V rows [N, W]
  query_expansion     V rows -> mean of the k2 neighbours' rows [N, k2 W]
  column_lists        V rows of a block of items -> V transposed (inverted index)
  jaccard_distance    query rows of V x a block of items -> 1 - m / (2 - m)

Distances: d(i, j) = 2 - 2 * score(i, j), score the joint ST score (or the visual
cosine) with i on the query side; row i of the reference's column-normalised
matrix is d(i, .) / max_j d(i, j). Ties between equal distances go to the lower
index, as a stable argsort would. Sums run in the reference's order (ascending
item index), in float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


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


def neighbourhood_problems(params: RerankParams, num_items: int) -> list[str]:
  """What is wrong with k1 and k2 for ``num_items`` items (query + gallery, ranked
  together): k1 neighbours besides the item itself, and k2 neighbours, must exist."""
  problems = []
  if params.k1 > num_items - 1:
    problems.append(f"k1={params.k1}: expected at most {num_items - 1} (one less than the "
                    f"{num_items} query and gallery items re-ranking ranks together)")
  if params.k2 > num_items:
    problems.append(f"k2={params.k2}: expected at most the {num_items} query and gallery items")
  return problems


def half_k1(k1: int) -> int:
  """round(k1 / 2), the neighbourhood of the expansion candidates (numpy's rounding:
  halves to even, as the published code's ``np.around``)."""
  return int(np.around(k1 / 2.0))


def expansion_width(k1: int) -> int:
  """Most members a k-reciprocal expansion set can have: (k1 + 1) (1 + round(k1 / 2) + 1)."""
  half = half_k1(k1)
  return (k1 + 1) + (k1 + 1) * (half + 1)


def k_reciprocal_mask(neighbours: jax.Array, k: int) -> jax.Array:
  """bool [N, k + 1]: neighbours[i, m] is a k-reciprocal neighbour of i.

  j is in R(i, k) when j is among i's k + 1 nearest and i among j's k + 1 nearest.

  Args:
    neighbours: int32 [N, K], each item's nearest items (itself usually first), K >= k + 1
      or K = N.
  """
  neighbours = jnp.asarray(neighbours)
  forward = neighbours[:, :k + 1]
  backward = neighbours[forward, :k + 1]                     # [N, k+1, k+1]
  return (backward == jnp.arange(len(neighbours))[:, None, None]).any(axis=2)


def sorted_unique_rows(index: jax.Array, sentinel: int) -> tuple[jax.Array, jax.Array]:
  """Each row's distinct values below ``sentinel``, ascending, padded with ``sentinel``.

  Args:
    index: int32 [N, W], values in [0, sentinel]; ``sentinel`` is an empty slot.
  Returns:
    (rows int32 [N, W], counts int32 [N]).
  """
  rows = jnp.sort(index, axis=1)
  duplicate = jnp.concatenate([jnp.zeros_like(rows[:, :1], jnp.bool_),
                               rows[:, 1:] == rows[:, :-1]], axis=1)
  rows = jnp.sort(jnp.where(duplicate, sentinel, rows), axis=1)
  return rows, (rows < sentinel).sum(axis=1).astype(jnp.int32)


def stable_sort_rows(index: jax.Array, *payload: jax.Array, max_value: int) -> tuple:
  """Each row sorted by ``index`` (stable), the payload arrays following.

  XLA's sort of several operands is ~10x slower than a sort of one on CPU, so when
  (max_value + 1) * W fits in int32 the row position is packed into the key.

  Args:
    index: int32 [N, W], values in [0, max_value].
    payload: arrays [N, W].
  Returns:
    (sorted index, *payload).
  """
  N, W = index.shape
  if (max_value + 1) * W >= 2**31:
    return tuple(jax.lax.sort((index,) + payload, dimension=1, num_keys=1, is_stable=True))
  key = jnp.sort(index * W + jnp.arange(W, dtype=jnp.int32)[None, :], axis=1)
  position = key % W
  return (key // W,) + tuple(jnp.take_along_axis(p, position, axis=1) for p in payload)


def expansion_members(neighbours: jax.Array, k1: int) -> tuple[jax.Array, jax.Array]:
  """The k-reciprocal expansion set R*(i) of every item, as sorted index rows.

  R*(i) = R(i, k1) plus R(c, round(k1 / 2)) of every c in R(i, k1) whose set shares
  more than 2/3 of its items with R(i, k1).

  Args:
    neighbours: int32 [N, K], K = min(N, k1 + 1) nearest items per item.
  Returns:
    (members int32 [N, expansion_width(k1)] ascending, N in empty slots; counts int32 [N]).
  """
  neighbours = jnp.asarray(neighbours, jnp.int32)
  N = neighbours.shape[0]
  half = half_k1(k1)
  full_mask = k_reciprocal_mask(neighbours, k1)              # [N, k1+1]
  half_mask = k_reciprocal_mask(neighbours, half)            # [N, half+1]
  full_sets = jnp.where(full_mask, neighbours[:, :k1 + 1], -1)
  half_sets = jnp.where(half_mask, neighbours[:, :half + 1], -2)
  candidates = jnp.where(full_sets >= 0, full_sets, 0)
  c_sets = half_sets[candidates]                             # [N, k1+1, half+1], -2 pads
  c_size = (c_sets >= 0).sum(axis=2)
  shared = (c_sets[:, :, :, None] == full_sets[:, None, None, :]).any(axis=3).sum(axis=2)
  take = (full_sets >= 0) & (3 * shared > 2 * c_size)        # shared > 2/3 |R(c)|, exactly
  members = jnp.concatenate(
      [full_sets, jnp.where(take[:, :, None], c_sets, -1).reshape(N, -1)], axis=1)
  members = jnp.where(members >= 0, members, N)
  width = expansion_width(k1)
  if members.shape[1] < width:  # N < k1 + 1: fewer neighbours than k1 + 1
    members = jnp.pad(members, ((0, 0), (0, width - members.shape[1])), constant_values=N)
  return sorted_unique_rows(members, N)


def row_positions(rows: jax.Array, values: jax.Array) -> jax.Array:
  """For sorted index rows [N, W] and values [N, V]: positions of the values in their row."""
  return jax.vmap(lambda r, v: jnp.searchsorted(r, v, side="left"))(rows, values)


def weights(members: jax.Array, distances: jax.Array, row_max: jax.Array,
            num_items: int) -> jax.Array:
  """V[i, m] = exp(-d(i, m) / max_j d(i, j)) normalised over R*(i); 0 in empty slots.

  Args:
    members: int32 [N, W] expansion sets (``num_items`` in empty slots).
    distances: float32 [N, W] d(i, members[i, w]).
    row_max: float32 [N] max_j d(i, j).
  Returns:
    float32 [N, W].
  """
  valid = members < num_items
  w = jnp.where(valid, jnp.exp(-(distances / row_max[:, None])), 0.0)
  return w / w.sum(axis=1, keepdims=True)


def query_expansion(index: jax.Array, value: jax.Array, neighbours: jax.Array, k2: int,
                    num_items: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """V_qe[i] = mean of the V rows of i's k2 nearest items (i's own row among them).

  Args:
    index, value: V as sorted rows, int32 / float32 [N, W] (``num_items`` = empty).
    neighbours: int32 [N, K], K >= k2.
  Returns:
    (index int32 [N, k2 W], value float32 [N, k2 W], counts int32 [N]); the values
    are summed over the k2 rows in neighbour order, then divided by k2, as numpy's
    mean over axis 0 does.
  """
  N, W = index.shape
  near = neighbours[:, :k2]
  # The k2 rows side by side, stably sorted by item: equal items stay in row order.
  flat_index = index[near].reshape(N, k2 * W)
  flat_value = value[near].reshape(N, k2 * W)
  flat_index, flat_value = stable_sort_rows(flat_index, flat_value, max_value=num_items)
  # Each run of equal items (at most k2 long) summed at its first slot, in row order.
  total = flat_value
  for o in range(1, k2):
    same = flat_index[:, o:] == flat_index[:, :-o]
    total = total.at[:, :-o].add(jnp.where(same, flat_value[:, o:], 0.0))
  first = jnp.concatenate([jnp.ones((N, 1), jnp.bool_),
                           flat_index[:, 1:] != flat_index[:, :-1]], axis=1)
  key = jnp.where(first & (flat_index < num_items), flat_index, num_items)
  merged, total = stable_sort_rows(key, total, max_value=num_items)
  total = jnp.where(merged < num_items, total, 0.0)
  return merged, total / k2, (merged < num_items).sum(axis=1).astype(jnp.int32)


def column_lists(index: jax.Array, value: jax.Array, num_items: int
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """V transposed for a block of items: for every column k, the items j with V[j, k] != 0.

  Args:
    index, value: V rows of the block's L items, int32 / float32 [L, W] (``num_items``
      in empty slots).
  Returns:
    (item int32 [L W], weight float32 [L W], start int32 [num_items + 1]): the
    entries of column k are ``item[start[k]:start[k+1]]`` (block-local item
    positions, ascending) with their weights.
  """
  L, W = index.shape
  if (num_items + 1) * L >= 2**31:
    column = index.reshape(-1)
    item = jnp.repeat(jnp.arange(L, dtype=jnp.int32), W)
    column, item, weight = jax.lax.sort((column, item, value.reshape(-1)), num_keys=2)
  else:
    # One int32 key (column, item) sorted alone (fast), then each entry's weight
    # found by binary search in its item's sorted row.
    key = jnp.sort((index * L + jnp.arange(L, dtype=jnp.int32)[:, None]).reshape(-1))
    column, item = key // L, key % L
    flat = index.reshape(-1)
    lo = jnp.zeros_like(column)
    hi = jnp.full_like(column, W)
    for _ in range(max(1, int(np.ceil(np.log2(W + 1))))):
      mid = (lo + hi) // 2
      right = (flat[item * W + jnp.minimum(mid, W - 1)] < column) & (mid < hi)
      lo = jnp.where(right, mid + 1, lo)
      hi = jnp.where(right, hi, mid)
    weight = value.reshape(-1)[item * W + jnp.minimum(lo, W - 1)]
  start = jnp.searchsorted(column, jnp.arange(num_items + 1, dtype=jnp.int32),
                           side="left").astype(jnp.int32)
  return item, weight, start


def term_counts(query_index: jax.Array, start: jax.Array, num_items: int) -> jax.Array:
  """int32 [c]: the (query entry, item entry) pairs ``jaccard_distance`` expands per row."""
  valid = query_index < num_items
  k = jnp.where(valid, query_index, 0)
  return jnp.where(valid, start[k + 1] - start[k], 0).sum(axis=1)


def jaccard_distance(query_index: jax.Array, query_value: jax.Array, item: jax.Array,
                     weight: jax.Array, start: jax.Array, num_columns: int, num_items: int,
                     num_terms: int) -> tuple[jax.Array, jax.Array]:
  """1 - m / (2 - m), m[i, j] = sum_k min(V[i, k], V[j, k]), through the inverted index.

  Every nonzero V[i, k] of a query row meets the items j of column k
  (``column_lists``): ``num_terms`` slots hold these (i, k, j) terms, and
  min(V[i, k], V[j, k]) is added into a dense [c, num_columns] block in ascending k,
  the reference's order. Work is O(terms), not O(c x columns x W).

  Args:
    query_index, query_value: query rows of V, int32 / float32 [c, W].
    item, weight, start: ``column_lists`` of the block's items.
    num_columns: L, the block's items.
    num_terms: slots; must be >= the total of ``term_counts`` over the c rows.
  Returns:
    (float32 [c, L] Jaccard distances, int32 scalar: the terms needed, to check).
  """
  c, W = query_index.shape
  valid = query_index < num_items
  k = jnp.where(valid, query_index, 0).reshape(-1)
  count = jnp.where(valid.reshape(-1), start[k + 1] - start[k], 0)
  inclusive = jnp.cumsum(count)
  first = inclusive - count
  t = jnp.arange(num_terms, dtype=jnp.int32)
  # The entry of term t: the last entry starting at or before t (a running max of
  # the entries' first slots; an empty entry shares its slot with a later one).
  marker = jnp.zeros((num_terms,), jnp.int32).at[first].max(
      jnp.arange(c * W, dtype=jnp.int32), mode="drop")
  entry = jax.lax.cummax(marker)
  ok = t < inclusive[-1]
  pos = jnp.where(ok, start[k[entry]] + t - first[entry], 0)
  j = item[pos]
  term = jnp.where(ok, jnp.minimum(query_value.reshape(-1)[entry], weight[pos]), 0.0)
  m = jnp.zeros((c, num_columns), jnp.float32).at[entry // W, j].add(term)
  return 1.0 - m / (2.0 - m), inclusive[-1]
