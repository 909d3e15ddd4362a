import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference
from jreid import evaluate
from jreid import metrics
from jreid import protocol
from jreid import records
from jreid import scoring


def _ranks(scores, qids, qcams, gids, gcams):
  good, junk = protocol.match_lists(np.asarray(qids), np.asarray(qcams), np.asarray(gids),
                                    np.asarray(gcams))
  out = metrics.good_item_ranks(jnp.asarray(scores, jnp.float32), jnp.asarray(good),
                                jnp.asarray(junk), jnp.asarray(np.asarray(gids) == -1))
  return np.asarray(out)


def test_hand_ranked_query_with_junk_and_distractor():
  # Gallery:   0      1      2      3      4      5
  gids = [5, 0, 5, -1, 7, 5]
  gcams = [2, 3, 1, 2, 2, 3]
  scores = [[0.9, 0.95, 0.99, 0.97, 0.5, 0.1]]
  # Order 2 (junk: same id+cam), 3 (junk: -1), 1 (distractor, a negative), 0 (good),
  # 4, 5 (good). After junk removal: [1, 0, 4, 5] -> good ranks 1 and 3.
  r = _ranks(scores, [5], [1], gids, gcams)
  assert r[0, :2].tolist() == [1, 3]
  m = metrics.retrieval_metrics(r, max_rank=6)
  assert m.cmc.tolist() == [0, 1, 1, 1, 1, 1]
  # trapezoid: 1/2 * (0 + 1/2)/2 + 1/2 * (1/3 + 2/4)/2
  assert m.mAP == pytest.approx(0.5 * 0.25 + 0.5 * (1 / 3 + 0.5) / 2, abs=1e-15)
  assert m.mAP_plain == pytest.approx(0.5 * (1 / 2 + 2 / 4), abs=1e-15)
  assert m.mINP == pytest.approx(2 / 4)


def test_good_at_rank_zero_uses_precision_one():
  r = _ranks([[0.9, 0.1, 0.5]], [1], [1], [1, 1, 2], [2, 3, 1])
  assert r[0, :2].tolist() == [0, 2]
  m = metrics.retrieval_metrics(r, max_rank=3)
  assert m.mAP == pytest.approx(0.5 * (1 + 1) / 2 + 0.5 * (1 / 2 + 2 / 3) / 2, abs=1e-15)
  assert m.cmc[0] == 1


def test_ties_break_by_gallery_index():
  # Items 0 (negative) and 1 (good) tie: the lower index ranks first.
  r = _ranks([[0.5, 0.5, 0.2]], [3], [1], [4, 3, 3], [2, 2, 2])
  assert r[0, :2].tolist() == [1, 2]
  # Good first in index order ranks first.
  r = _ranks([[0.5, 0.5]], [3], [1], [3, 4], [2, 2])
  assert r[0, 0] == 0


def test_queries_without_good_items_are_not_averaged():
  # Query 0 has a good item at rank 0; query 1's only same-id item is same-camera junk.
  r = _ranks([[0.9, 0.1], [0.9, 0.1]], [1, 2], [1, 1], [1, 2], [2, 1])
  m = metrics.retrieval_metrics(r, max_rank=2)
  assert (m.num_queries, m.num_valid_queries) == (2, 1)
  assert m.mAP == 1.0 and m.cmc[0] == 1.0


def test_matches_reference_loop_on_random_data_with_st():
  rng = np.random.default_rng(1)
  Q, G, D = 120, 900, 16
  qids, qcams, qt = rng.integers(1, 40, Q), rng.integers(1, 7, Q), rng.integers(0, 90_000, Q)
  gids, gcams, gt = rng.integers(-1, 40, G), rng.integers(1, 7, G), rng.integers(0, 90_000, G)
  qf = scoring.l2_normalise_features(rng.normal(size=(Q, D)).astype(np.float32))
  gf = scoring.l2_normalise_features(rng.normal(size=(G, D)).astype(np.float32))
  gf[5] = gf[6] = gf[7]  # exact ties
  table = numpy_reference.fit_st(rng.integers(0, 40, 800), rng.integers(0, 6, 800),
                                 rng.integers(0, 90_000, 800), 6, num_bins=1000)
  # cameras 1-based for the reference, 0-based for jreid; a budget of 48 queries per chunk.
  found = evaluate.evaluate(records.Records(qids, qcams - 1, qt, qf),
                            records.Records(gids, gcams - 1, gt, gf), table, bin_width=100,
                            methods=("visual", "st"), budget_elements=48 * G, max_rank=50)
  for kind, tab in (("visual", None), ("st", table)):
    ref = numpy_reference.evaluate(qf, qids, qcams, qt, gf, gids, gcams, gt, tab, max_rank=50)
    got = found[kind]
    # float32 scores against the reference's float64 joint: near-ties (1 ulp) may
    # flip, which moves AP by far less than 1e-6; a misranked item moves it by ~1e-3.
    np.testing.assert_allclose(got.cmc, ref["cmc"], atol=1e-12)
    assert got.mAP == pytest.approx(ref["mAP"], abs=1e-6)
    assert got.mAP_plain == pytest.approx(ref["mAP_plain"], abs=1e-6)


def test_chunk_size_does_not_change_results():
  rng = np.random.default_rng(2)
  Q, G = 37, 200
  q = records.Records(rng.integers(0, 10, Q), rng.integers(0, 3, Q), rng.integers(0, 1000, Q),
                      scoring.l2_normalise_features(rng.normal(size=(Q, 8)).astype(np.float32)))
  g = records.Records(rng.integers(-1, 10, G), rng.integers(0, 3, G), rng.integers(0, 1000, G),
                      scoring.l2_normalise_features(rng.normal(size=(G, 8)).astype(np.float32)))
  run = lambda budget: evaluate.evaluate(q, g, None, bin_width=100, methods=["visual"],
                                         budget_elements=budget)["visual"]
  a, b = run(5 * G), run(64 * G)
  assert a.mAP == b.mAP and np.array_equal(a.cmc, b.cmc)
  # A budget below 128 queries x the gallery tiles the gallery's columns (two sweeps).
  c = run(G)
  assert c.mAP == b.mAP and np.array_equal(c.cmc, b.cmc)


def test_blocks_of_columns_add_up():
  # Ranks from two column blocks (max of good scores, sum of histograms) equal one block.
  rng = np.random.default_rng(3)
  Q, G = 9, 40
  scores = jnp.asarray(rng.integers(0, 6, (Q, G)) / 5.0, jnp.float32)  # many exact ties
  gids, gcams = rng.integers(-1, 5, G), rng.integers(0, 3, G)
  good, junk = protocol.match_lists(rng.integers(0, 5, Q), rng.integers(0, 3, Q), gids, gcams)
  whole = jax.jit(metrics.good_item_ranks)(scores, jnp.asarray(good), jnp.asarray(junk),
                                           jnp.asarray(gids == -1))

  @jax.jit
  def in_two_blocks(scores, good, junk, column_junk):
    valid = jnp.ones((G,), bool)
    parts = [(0, scores[:, :17]), (17, scores[:, 17:])]
    best = jnp.maximum(*[metrics.gather_good_scores(s, o, valid[o:o + s.shape[1]], good)
                         for o, s in parts])
    sorted_scores, sorted_index = metrics.sort_good_items(best, good, G)
    hist = sum(metrics.negatives_histogram(s, o, valid[o:o + s.shape[1]],
                                           column_junk[o:o + s.shape[1]], good, junk,
                                           sorted_scores, sorted_index) for o, s in parts)
    return metrics.ranks_from_histogram(hist, good, G)

  np.testing.assert_array_equal(
      in_two_blocks(scores, good, junk, jnp.asarray(gids == -1)), whole)


def test_rank_5_and_10_do_not_depend_on_the_stored_curve_length():
  """Hand case: first good ranks 0, 3, 7, 12 -> CMC@1 1/4, @5 2/4, @10 3/4."""
  ranks = np.array([[0], [3], [7], [12]], np.int64)
  for max_rank in (1, 3, 10, 100):
    s = metrics.retrieval_metrics(ranks, max_rank).summary()
    assert (s["rank1"], s["rank5"], s["rank10"]) == (0.25, 0.5, 0.75), max_rank
  assert metrics.retrieval_metrics(ranks, 3).cmc.tolist() == [0.25, 0.25, 0.25]


def test_distractor_and_junk_queries_are_never_matched():
  """A distractor query (id 0) and a junk query (id -1) have no good items, even with
  same-id gallery items in other cameras: they are left out of the averages."""
  #         gallery: 0  1   2  3
  gids = np.array([0, -1, 4, 0])
  gcams = np.array([2, 3, 2, 1])
  good, _ = protocol.match_lists(np.array([0, -1, 4]), np.array([1, 1, 1]), gids, gcams)
  assert (good[0] < 0).all() and (good[1] < 0).all()
  assert sorted(good[2][good[2] >= 0].tolist()) == [2]
  scores = [[0.9, 0.8, 0.1, 0.2], [0.9, 0.8, 0.1, 0.2], [0.9, 0.8, 0.1, 0.2]]
  r = _ranks(scores, [0, -1, 4], [1, 1, 1], gids, gcams)
  m = metrics.retrieval_metrics(r, max_rank=4)
  # Query 2 (id 4): gallery 1 is junk (-1), order 0, 3, 2 -> its good item at rank 2.
  assert (m.num_queries, m.num_valid_queries) == (3, 1)
  # Trapezoid AP of one good item at rank 2: (0 + 1/3) / 2; plain AP: 1/3.
  assert m.cmc.tolist() == [0, 0, 1, 1] and m.mAP == pytest.approx(1 / 6)
  assert m.mAP_plain == pytest.approx(1 / 3)


def test_evaluation_counts_distractor_queries_and_leaves_them_out():
  rng = np.random.default_rng(0)
  feats = lambda n: scoring.l2_normalise_features(rng.normal(size=(n, 8)).astype(np.float32))
  gallery = records.Records(np.array([1, 1, 2, 2, 0, 0]), np.array([0, 1, 0, 1, 0, 1]),
                            np.arange(6) * 10, feats(6))
  query = records.Records(np.array([1, 2, 0]), np.array([0, 1, 0]), np.array([5, 15, 25]),
                          feats(3))
  logged = []
  counts = evaluate.check_inputs(query, gallery, None, lambda *a: logged.append(a[0] % a[1:]))
  assert counts["distractor_or_junk_queries"] == 1 and counts["queries_with_match"] == 2
  assert any("1 of 3 queries are distractors or junk (id 0: 1, id -1: 0)" in m for m in logged)
  got = evaluate.evaluate(query, gallery, None, bin_width=100, methods=("visual",),
                          max_rank=5)["visual"]
  want = evaluate.evaluate(query.select(np.arange(2)), gallery, None, bin_width=100,
                           methods=("visual",), max_rank=5)["visual"]
  assert got.num_valid_queries == 2 and got.cmc.tolist() == want.cmc.tolist()
  assert got.mAP == want.mAP
