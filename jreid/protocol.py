"""The Market-1501 retrieval protocol: which gallery items count for a query, and the top-k type.

For a query of identity q seen by camera c, a gallery item of identity g seen by
camera d is

* junk (never ranked, neither a match nor a negative) when g is -1
  (``records.JUNK_ID``), or when g == q and d == c (the same person in the same
  camera);
* a true match (a good item) when g == q, d != c and g is not -1;
* a negative otherwise; distractors (``records.DISTRACTOR_ID``, 0) are negatives.

``is_junk`` is that rule for arrays of any broadcastable shape (numpy or jax);
``match_lists`` lists each query's good and same-id junk items for the metrics.
``TopK`` is the one result type of every top-k ranking (the search, and the top
items of the evaluation's own pass). No configs, no TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jreid import records as records_lib


def is_junk(query_ids, query_cameras, gallery_ids, gallery_cameras):
  """bool, broadcast: the gallery item is junk for the query (see the module docstring)."""
  return (gallery_ids == records_lib.JUNK_ID) | ((gallery_ids == query_ids)
                                                 & (gallery_cameras == query_cameras))


def match_lists(query_ids: np.ndarray, query_cameras: np.ndarray, gallery_ids: np.ndarray,
                gallery_cameras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per query, the gallery indices of its good and of its same-id junk items.

  Returns:
    (good_index, junk_index), int32 [Q, K] each, K the largest number of gallery
    images of one query identity; -1 pads. good: same id, other camera, id != -1;
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
  good = valid & ~junk
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
