"""Query x gallery evaluation on the device mesh: visual, ST-fused and re-ranked rankings.

The gallery (with re-ranking: every item, queries first) is split over the
``data`` axis of the mesh, every device of every process holding a contiguous
block of items; queries come in chunks that every device sees whole. Each kernel
works on score tiles and merges what the devices found with one collective, so
the metrics do not depend on the number of devices, and nothing quadratic in
Q + G is ever held whole: every tile is bounded by the plan's budget.

The passes live in ``jreid.evaluation``: the plan of tile and chunk sizes
(``plan``), the neighbour pass and the rest of re-ranking's inputs
(``neighbours``, ``rerank_pass``), and the ranks pass (``ranks``), which gives
every requested method's good-item ranks and the top items from one matmul per
tile. Each kernel is compiled once per call, with one shape (the last chunk is
padded); the log gives compilation and run time apart. The protocol (junk, good
items, the top-k type) is ``jreid.protocol``.

Methods are named in ``METHODS``; adding one is one entry there.
"""

from __future__ import annotations

import time
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jreid import errors
from jreid import metrics
from jreid import protocol
from jreid import records as records_lib
from jreid import rerank as rerank_lib
from jreid import scoring
from jreid import sharding
from jreid import st as st_lib
from jreid.evaluation import common
from jreid.evaluation import neighbours as neighbours_lib
from jreid.evaluation import plan as plan_lib
from jreid.evaluation import ranks as ranks_lib
from jreid.evaluation import rerank_pass

Records = records_lib.Records
RerankParams = rerank_lib.RerankParams
SCORE_KINDS = common.SCORE_KINDS


Method = common.Method
METHODS: dict[str, Method] = {
    "visual": Method("visual"),
    "st": Method("st"),
    "visual_rerank": Method("visual", rerank=True),
    "st_rerank": Method("st", rerank=True),
}


def _factor_table(place: common.Placement, st_table, fusion) -> jax.Array:
  """The ST factor table on the mesh ([1, 1, 1] zeros for visual only): every kernel takes it."""
  return place.put(np.zeros((1, 1, 1), np.float32) if st_table is None else np.asarray(
      scoring.st_factor_table(np.asarray(st_table, np.float32), fusion)))


def nearest_items(features: np.ndarray, cameras: np.ndarray, times: np.ndarray,
                  st_table: np.ndarray | None, *, k: int, bin_width: int,
                  fusion: scoring.FusionParams = scoring.FusionParams(),
                  kinds: Sequence[str] = SCORE_KINDS, budget_elements: int = 1 << 22,
                  mesh=None, backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The neighbour pass of re-ranking, alone: each item's k nearest items among all.

  Args:
    features: float32 [N, D] normalised; cameras (0-based), times (frames): int [N].
    st_table: float [C, C, H] ST probabilities (None: visual only).
    k: neighbours per item (<= N).
    kinds: score kinds, of ``SCORE_KINDS``.
    backend: whose plan to follow (``plan.make_plan``; None: JAX's default backend).
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
  plan = plan_lib.make_plan(budget_elements, backend)
  place = common.Placement(mesh or sharding.make_mesh())
  table = _factor_table(place, st_table, fusion)
  tile, block = plan.square_tiles(-(-N // place.devices), k)
  cols, _ = common.columns(place, np.asarray(features, np.float32), cameras, times,
                           np.ones(N, bool), np.zeros(N, bool), block)
  return neighbours_lib.neighbour_pass(place, common.Timer(plan), tuple(kinds), cols, N, k,
                                       tile, table, bin_width, fusion)


# One program for the lookup of the top items' ST probabilities.
_pair_st_probabilities = jax.jit(scoring.pair_st_probabilities, static_argnums=1)


def _top_k(top: ranks_lib.TopArrays, query: Records, gallery: Records,
           st_table: np.ndarray | None, bin_width: int) -> protocol.TopK:
  """The ranks pass's top items as ``protocol.TopK`` (what ``search.top_k`` returns for
  them with ``leave_out_junk``: -inf scores for junk, the ranking score as ``visual``
  without an ST table), with each item's ST probability looked up."""
  score = np.asarray(protocol.scores_of(top.order), np.float32)
  pairs = len(query) * len(gallery)
  if st_table is None:
    return protocol.TopK(top.index, score, None, None, "visual", pairs)
  prob = _pair_st_probabilities(
      jnp.asarray(st_table, jnp.float32), int(bin_width),
      jnp.asarray(query.cameras[:, None], jnp.int32), jnp.asarray(query.times[:, None], jnp.int32),
      jnp.asarray(gallery.cameras[top.index], jnp.int32),
      jnp.asarray(gallery.times[top.index], jnp.int32))
  return protocol.TopK(top.index, top.cosine, np.asarray(prob, np.float32), score, "joint", pairs)


def method_ranks(query: Records, gallery: Records, st_table: np.ndarray | None, *,
                 bin_width: int, fusion: scoring.FusionParams, methods: Sequence[str],
                 rerank: RerankParams = RerankParams(), budget_elements: int = 1 << 22,
                 top_k: int = 0, mesh=None, backend: str | None = None
                 ) -> tuple[dict[str, np.ndarray], protocol.TopK | None]:
  """Good-item ranks of every query under each method (see ``evaluate``), and with
  ``top_k`` each query's best gallery items from the same score tiles.

  Args:
    top_k: gallery items per query (at most G), by the joint score with an ST table,
      else by the visual one, junk left out as the protocol says; 0: none.
    backend: whose plan to follow (``plan.make_plan``; None: JAX's default backend).
  Returns:
    ({method: int [Q, K]} 0-based ranks after junk removal, ascending per row, padded
    with ``INT32_MAX`` (``metrics.retrieval_metrics`` reads them), ``protocol.TopK``
    (ties to the lower gallery index) or None).
  """
  methods = list(methods)
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"unknown evaluation methods {unknown}; known: {sorted(METHODS)}")
  if len(set(methods)) != len(methods):
    raise ValueError(f"methods named twice: {methods}")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0, got {top_k}")
  plan = plan_lib.make_plan(budget_elements, backend)
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
  if len(gallery) == 0:
    raise ValueError("the gallery is empty: nothing to rank the queries against")
  top_k = min(int(top_k), len(gallery))
  top_kind = "st" if st_table is not None else "visual"
  Q, G = len(query), len(gallery)
  if Q == 0:
    empty = ranks_lib.TopArrays(np.zeros((0, top_k), np.float32), np.zeros((0, top_k), np.int64),
                                np.zeros((0, top_k), np.float32))
    return ({m: np.zeros((0, 1), np.int64) for m in methods},
            _top_k(empty, query, gallery, st_table, bin_width) if top_k else None)
  place = common.Placement(mesh or sharding.make_mesh())
  timer = common.Timer(plan)
  job_start = time.time()
  good, junk = protocol.match_lists(query.person_ids, query.cameras, gallery.person_ids,
                                    gallery.cameras)
  table = _factor_table(place, st_table, fusion)
  rerank_kinds = tuple(k for k in SCORE_KINDS
                       if any(METHODS[m].rerank and METHODS[m].score == k for m in methods))
  qf = np.asarray(query.features, np.float32)
  gallery_junk = gallery.person_ids == records_lib.JUNK_ID

  inputs = None
  problems = rerank_lib.neighbourhood_problems(rerank, Q + G) if rerank_kinds else []
  if problems:
    raise ValueError("rerank: " + "; ".join(problems))
  if rerank_kinds:
    # The columns are every item, queries first; only the gallery ones are ranked.
    items = (np.concatenate([qf, np.asarray(gallery.features, np.float32)]),
             np.concatenate([query.cameras, gallery.cameras]).astype(np.int32),
             np.concatenate([query.times, gallery.times]).astype(np.int32),
             np.concatenate([np.zeros(Q, bool), np.ones(G, bool)]),
             np.concatenate([np.zeros(Q, bool), gallery_junk]))
    inputs = rerank_pass.rerank_inputs(place, timer, plan, rerank_kinds, items, Q, table, rerank,
                                       bin_width, fusion)
    cols, block, first_gallery, num_items = inputs.columns, inputs.block, Q, Q + G
    rows, tile = plan.ranks_chunks(Q, block, rerank=True)
    chunk_terms = max(int(inputs.terms[:, s:e].sum(axis=1).max())
                      for s, e in common.chunks(Q, rows))
    num_terms = plan.term_slots(chunk_terms)
    logging.info("rerank: %d Jaccard terms per chunk of %d queries at most (mean per query %.0f)",
                 num_terms, rows, float(inputs.terms.mean()))
  else:
    cols, block = common.columns(place, gallery.features, gallery.cameras, gallery.times,
                                 np.ones(G, bool), gallery_junk)
    first_gallery, num_items, num_terms = 0, G, 1
    rows, tile = plan.ranks_chunks(Q, block, rerank=False)

  specs = tuple(METHODS[m] for m in methods)
  kernel = ranks_lib.ranks_kernel(place.mesh, specs, block, tile, first_gallery, G, num_items,
                                  num_terms, float(rerank.lambda_value), int(bin_width), fusion,
                                  top_k, top_kind, rerank_kinds)
  what = ", ".join(methods + ([f"top {top_k} by {top_kind}"] if top_k else []))
  queries = (qf, np.asarray(query.cameras, np.int32), np.asarray(query.times, np.int32))
  ranks, top = ranks_lib.ranks_pass(place, timer, kernel, rows, what, queries, good, junk, cols,
                                    table, inputs, len(methods), top_k, num_terms)
  logging.info("evaluate: %d queries x %d gallery on %d device(s), methods %s: %.2f s "
               "(compilation %.2f s; run %s)", Q, G, place.devices, what,
               time.time() - job_start, timer.compile_s,
               ", ".join(f"{k} {v:.2f} s" for k, v in timer.run_s.items()))
  return ({m: ranks[i] for i, m in enumerate(methods)},
          _top_k(top, query, gallery, st_table, bin_width) if top_k else None)


def evaluate(query: Records, gallery: Records, st_table: np.ndarray | None, *,
             bin_width: int, fusion: scoring.FusionParams = scoring.FusionParams(),
             methods: Sequence[str] = ("visual", "st"), rerank: RerankParams = RerankParams(),
             budget_elements: int = 1 << 22, max_rank: int = 100,
             mesh=None, backend: str | None = None) -> dict[str, metrics.RetrievalMetrics]:
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
    backend: whose plan to follow (``plan.make_plan``; None: JAX's default backend).
  Returns:
    {method: metrics}, in the order of ``methods``.
  """
  ranks, _ = method_ranks(query, gallery, st_table, bin_width=bin_width, fusion=fusion,
                          methods=methods, rerank=rerank, budget_elements=budget_elements,
                          mesh=mesh, backend=backend)
  return {m: metrics.retrieval_metrics(r, max_rank) for m, r in ranks.items()}


def check_inputs(query: records_lib.Records, gallery: records_lib.Records,
                 st_model: st_lib.STModel | None, log=logging.warning) -> dict:
  """Stops when no query can be scored; warns (with counts) where the prior is blind.

  Raises errors.InputError when no query has a true match in the gallery (same id,
  another camera, id > 0): every metric would be 0. Warns, with their count, of
  distractor and junk queries (id 0 and -1: never a match, left out of the
  averages), and of the other queries without a true match. Warns when query/gallery
  time differences fall beyond the ST table's last bin (there the ST probability
  is 0 and "st" ranks like "visual"), and when query cameras have no transits in
  the ST model. Returns the counts.
  """
  good, _ = protocol.match_lists(query.person_ids, query.cameras, gallery.person_ids,
                                   gallery.cameras)
  with_match = int((good >= 0).any(axis=1).sum()) if len(query) else 0
  unlabelled = int((query.person_ids <= records_lib.DISTRACTOR_ID).sum())
  if with_match == 0:
    raise errors.InputError(
        f"no query has a true match in the gallery (same id, another camera, id > 0): "
        f"{len(query)} queries ({unlabelled} of them distractors or junk, id 0 or -1), "
        f"{len(gallery)} gallery items of which "
        f"{int((gallery.person_ids == records_lib.JUNK_ID).sum())} junk; every metric would be 0")
  if unlabelled:
    log("evaluate: %d of %d queries are distractors or junk (id 0: %d, id -1: %d): they are "
        "never a match and are left out of the averages", unlabelled, len(query),
        int((query.person_ids == records_lib.DISTRACTOR_ID).sum()),
        int((query.person_ids < records_lib.DISTRACTOR_ID).sum()))
  if with_match < len(query) - unlabelled:
    log("evaluate: %d of %d queries have no true match in the gallery and are left out of "
        "the averages", len(query) - unlabelled - with_match, len(query))
  counts = dict(queries_with_match=with_match, distractor_or_junk_queries=unlabelled)
  if st_model is None:
    return counts
  span = st_model.params.num_bins * st_model.params.bin_width
  g = np.sort(gallery.times)
  inside = (np.searchsorted(g, query.times + span, side="left")
            - np.searchsorted(g, query.times - span, side="right")).sum()
  beyond = len(query) * len(gallery) - int(inside)
  counts["pairs_beyond_last_bin"] = beyond
  if beyond:
    log("evaluate: %d of %d query/gallery pairs (%.2f%%) are further apart in time than the ST "
        "table's last bin (%d bins x %s): their ST probability is 0%s", beyond,
        len(query) * len(gallery), 100.0 * beyond / (len(query) * len(gallery)),
        st_model.params.num_bins,
        st_lib.bin_text(st_model.params.bin_width, st_model.ticks_per_second),
        " (every pair: 'st' ranks exactly like 'visual')" if inside == 0 else "")
  seen = st_model.table.sum(axis=(1, 2)) + st_model.table.sum(axis=(0, 2)) > 0
  unseen = (query.cameras >= len(seen)) | ~seen[np.minimum(query.cameras, len(seen) - 1)]
  counts["queries_from_unseen_cameras"] = int(unseen.sum())
  if unseen.any():
    log("evaluate: %d queries come from cameras %s that the ST model has no transits for "
        "(ST probability 0 for all their pairs)", int(unseen.sum()),
        sorted(set((query.cameras[unseen] + 1).tolist())))
  return counts
