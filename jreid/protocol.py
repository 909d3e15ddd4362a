"""The Market-1501 retrieval protocol: which gallery items count for a query, and the top-k type.

For a query of identity q seen by camera c, a gallery item of identity g seen by
camera d is

* junk (never ranked, neither a match nor a negative) when g is -1
  (``records.JUNK_ID``), or when g == q and d == c (the same person in the same
  camera);
* a true match (a good item) when g == q, d != c and q is a real identity (> 0);
* a negative otherwise; distractors (``records.DISTRACTOR_ID``, 0) are negatives.

So a distractor or junk query (id 0 or -1) has no true match: the metrics leave it
out of their averages, and the evaluation counts it (``evaluate.check_inputs``).

``is_junk`` is that rule for arrays of any broadcastable shape (numpy or jax);
``match_lists`` lists each query's good and same-id junk items for the metrics.
``best_items`` is the one top-k selection (the search's chunks and the tiles of the
evaluation's ranks pass): best score first, items left out after every real one,
lower gallery index first among equals. ``TopK`` is the one result type of every
top-k ranking. No configs, no TensorFlow.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jreid import records as records_lib

# The order key of an item left out (junk) among the best items: after every real
# item, before columns that are no item (+inf), so that with fewer than k real items
# left the lists end with the left-out items by index.
LEFT_OUT_ORDER = np.float32(np.finfo(np.float32).max)


def is_junk(query_ids, query_cameras, gallery_ids, gallery_cameras):
  """bool, broadcast: the gallery item is junk for the query (see the module docstring)."""
  return (gallery_ids == records_lib.JUNK_ID) | ((gallery_ids == query_ids)
                                                 & (gallery_cameras == query_cameras))


def best_items(scores: jax.Array, left_out: jax.Array | None, width: int,
               valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Each row's ``width`` best columns: the one top-k selection rule.

  Args:
    scores: float32 [c, L], higher is better.
    left_out: bool [c, L] items never ranked among the real ones (junk), or None.
    valid: bool [L] columns that are items (default: all).
  Returns:
    (order keys float32 [c, width], column positions int32 [c, width]), by the order
    key ascending: -score, ``LEFT_OUT_ORDER`` for items left out, +inf for columns
    that are no item; among equal keys the lower column first.
  """
  order = -scores if left_out is None else jnp.where(left_out, LEFT_OUT_ORDER, -scores)
  if valid is not None:
    order = jnp.where(valid[None, :], order, jnp.inf)
  negated, position = jax.lax.top_k(-order, width)
  return -negated, position


def scores_of(order: jax.Array) -> jax.Array:
  """The scores of ``best_items``' order keys: -inf for items left out."""
  return jnp.where(order == LEFT_OUT_ORDER, -jnp.inf, -order)


def match_lists(query_ids: np.ndarray, query_cameras: np.ndarray, gallery_ids: np.ndarray,
                gallery_cameras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per query, the gallery indices of its good and of its same-id junk items.

  Returns:
    (good_index, junk_index), int32 [Q, K] each, K the largest number of gallery
    images of one query identity; -1 pads. good: same id, other camera, id > 0;
    junk: the query's own-id items that ``is_junk`` leaves out (the gallery's id -1
    items, junk for every query, are the callers' gallery-side flag,
    ``gallery_ids == records.JUNK_ID``).
  """
  order = np.argsort(gallery_ids, kind="stable")
  sorted_ids = gallery_ids[order]
  lo = np.searchsorted(sorted_ids, query_ids, side="left")
  hi = np.searchsorted(sorted_ids, query_ids, side="right")
  K = max(1, int((hi - lo).max())) if len(query_ids) else 1
  pos = lo[:, None] + np.arange(K)[None, :]
  valid = pos < hi[:, None]
  cand = order[np.minimum(pos, len(order) - 1)] if len(order) else np.zeros_like(pos)
  junk = valid & is_junk(query_ids[:, None], query_cameras[:, None], gallery_ids[cand],
                         gallery_cameras[cand])
  good = valid & ~junk & (query_ids[:, None] > records_lib.DISTRACTOR_ID)
  return np.where(good, cand, -1).astype(np.int32), np.where(junk, cand, -1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TopK:
  """Top-k of every query (Q queries, k columns, best first).

  Attributes:
    index: int64 [Q, k] gallery row of each result.
    visual: float32 [Q, k] cosine similarity (ranked by it: -inf for junk left out).
    st_probability: float32 [Q, k] ST probability, or None (ranked without ST).
    joint: float32 [Q, k] joint score (-inf for junk left out), or None (without ST).
    ranked_by: "joint" or "visual": the score the lists are sorted by.
    num_pairs: query x gallery pairs scored.
    num_beyond_last_bin: pairs of two different cameras known to the ST model whose
      time difference falls beyond the last bin (ST probability 0 there).
  """
  index: np.ndarray
  visual: np.ndarray
  st_probability: np.ndarray | None
  joint: np.ndarray | None
  ranked_by: str
  num_pairs: int = 0
  num_beyond_last_bin: int = 0

  @property
  def score(self) -> np.ndarray:
    """[Q, k] the score the lists are ranked by."""
    return self.joint if self.ranked_by == "joint" else self.visual

  @property
  def real(self) -> np.ndarray:
    """bool [Q, k]: a real result, not an item the protocol left out (score -inf, ranked
    after every real one), so each row is True, then False."""
    return ~np.isneginf(self.score)
