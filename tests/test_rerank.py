"""k-reciprocal re-ranking against a dense implementation written from the paper."""

import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference
from jreid import evaluate
from jreid.evaluation import plan
from jreid import metrics
from jreid import protocol
from jreid import records
from jreid import rerank
from jreid import scoring


def dense_rerank(dist, num_query, k1, k2, lambda_value):
  """Zhong et al. 2017, Eqs. (5)-(12), straight from the paper, dense float64.

  dist: [N, N] original distances. Returns the final [Q, G] distance.
  """
  N = len(dist)
  original = (dist / dist.max(axis=0)).T
  rank = np.argsort(original, axis=1, kind="stable")

  def recip(i, k):
    forward = rank[i, :k + 1]
    return [j for j in forward if i in rank[j, :k + 1]]

  V = np.zeros((N, N))
  for i in range(N):
    r = recip(i, k1)
    expanded = set(r)
    for c in r:
      rc = recip(c, int(np.around(k1 / 2)))
      if len(set(rc) & set(r)) > 2 / 3 * len(rc):
        expanded |= set(rc)
    idx = np.array(sorted(expanded))
    w = np.exp(-original[i, idx])
    V[i, idx] = w / w.sum()
  if k2 != 1:
    V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(N)])
  m = np.minimum(V[:num_query, None, :], V[None, :, :]).sum(axis=2)  # [Q, N]
  jaccard = 1 - m / (2 - m)
  final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
  return final[:, num_query:]


def _world(seed, Q, G, D=8, ids=12):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(ids + 1, D))
  def side(n, low):
    pid = rng.integers(low, ids + 1, n)
    f = scoring.l2_normalise_features((centres[np.maximum(pid, 0)] + 0.9 * rng.normal(size=(n, D))).astype(np.float32))
    return records.Records(pid, rng.integers(0, 3, n), rng.integers(0, 3000, n), f)
  return side(Q, 1), side(G, -1)


def _ranks_from_distance(final, query, gallery):
  good, junk = protocol.match_lists(query.person_ids, query.cameras, gallery.person_ids,
                                    gallery.cameras)
  return np.asarray(metrics.good_item_ranks(jnp.asarray(-final, jnp.float32), jnp.asarray(good),
                                            jnp.asarray(junk),
                                            jnp.asarray(gallery.person_ids == -1))), good, junk


@pytest.mark.parametrize("k1, k2, lam", [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.0)])
def test_matches_dense_paper_implementation(k1, k2, lam):
  # Both kinds in one call (they share the neighbour pass), each against the dense
  # implementation of its own distance.
  query, gallery = _world(0, 20, 70)
  rng = np.random.default_rng(5)
  table = numpy_reference.fit_st(rng.integers(0, 12, 200), rng.integers(0, 3, 200),
                                 rng.integers(0, 3000, 200), 3, num_bins=40, sigma=3)
  got, _ = evaluate.method_ranks(query, gallery, table, bin_width=100,
                                 fusion=scoring.FusionParams(),
                                 methods=["visual_rerank", "st_rerank"],
                                 rerank=rerank.RerankParams(k1, k2, lam), budget_elements=300)
  f = np.concatenate([query.features, gallery.features])
  cams = np.concatenate([query.cameras, gallery.cameras])
  times = np.concatenate([query.times, gallery.times])
  for method, use_st in (("visual_rerank", False), ("st_rerank", True)):
    score = (f @ f.T).astype(np.float64)
    if use_st:
      p = np.stack([numpy_reference.st_row(table, cams[i], times[i], cams, times)
                    for i in range(len(f))])
      score = 1 / (1 + np.exp(-5 * score)) / (1 + 2 * np.exp(-5 * p))
    final = dense_rerank(2 - 2 * score, len(query), k1, k2, lam)
    expected, good, junk = _ranks_from_distance(final, query, gallery)
    np.testing.assert_array_equal(got[method], expected)
    assert metrics.retrieval_metrics(got[method], 10).mAP == pytest.approx(
        metrics.retrieval_metrics(expected, 10).mAP, abs=1e-12)


def test_expansion_sets_hand_case():
  # 4 items; neighbour lists (self first). 0 and 1 are mutual, 2 and 3 are mutual.
  nb = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]], np.int32)
  mask = rerank.k_reciprocal_mask(nb, 1)
  assert mask.tolist() == [[True, True], [True, True], [True, True], [True, True]]
  mask2 = rerank.k_reciprocal_mask(nb, 2)
  # 0's 3-nn {0,1,2}; 2's 3-nn {2,3,0} contains 0 -> reciprocal.
  assert mask2[0].tolist() == [True, True, True]
  # 1's 3-nn {1,0,3}; 3's 3-nn {3,2,1} contains 1 -> reciprocal.
  assert mask2[1].tolist() == [True, True, True]


def test_expansion_members_hand_case():
  # 0-1-2 are mutual 2-nn; 3's nearest are 2, 1 (not reciprocal: 3 is nobody's 3-nn).
  nb = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 1]], np.int32)
  members, counts = rerank.expansion_members(nb, 2)
  assert rerank.expansion_width(2) == 3 + 3 * 2 == members.shape[1]
  assert counts.tolist() == [3, 3, 3, 1]
  assert np.asarray(members)[:, :3].tolist() == [[0, 1, 2], [0, 1, 2], [0, 1, 2], [3, 4, 4]]


def test_jaccard_block_hand_case():
  V = np.array([[0.5, 0.5, 0.0], [0.25, 0.0, 0.75], [0.0, 1.0, 0.0]], np.float32)
  # V as sorted fixed-width rows, 3 (the item count) in empty slots.
  index = np.array([[0, 1, 3], [0, 2, 3], [1, 3, 3]], np.int32)
  value = np.take_along_axis(np.pad(V, ((0, 0), (0, 1))), index, axis=1)
  item, weight, start = rerank.column_lists(index, value, 3)
  assert np.asarray(start).tolist() == [0, 2, 4, 5]
  assert rerank.term_counts(index[:1], start, 3).tolist() == [4]
  got, used = rerank.jaccard_distance(index[:1], value[:1], item, weight, start, 3, 3, 8)
  assert int(used) == 4
  m = np.array([1.0, 0.25, 0.5])
  np.testing.assert_allclose(got[0], 1 - m / (2 - m), rtol=1e-6)


def test_params_validation():
  with pytest.raises(ValueError, match="lambda_value"):
    rerank.RerankParams(lambda_value=1.5)


@pytest.mark.parametrize("budget", [100, 700, 1 << 20])
def test_neighbour_pass_equals_brute_force(budget):
  # The symmetric pass scores each unordered tile pair once and re-scores the ST kind
  # with the sides swapped. Features in {-1/2, 0, 1/2}: every cosine is exact in
  # float32, so there are many exact ties (which go to the lower index); times in
  # 0..4 give many equal-time pairs, where the reference's ST factor is asymmetric.
  rng = np.random.default_rng(3)
  N, k = 75, 7
  features = (rng.integers(-1, 2, (N, 4)) / 2).astype(np.float32)
  cameras = rng.integers(0, 3, N).astype(np.int32)
  times = rng.integers(0, 5, N).astype(np.int32)
  table = rng.uniform(size=(3, 3, 4)).astype(np.float32)
  assert not np.allclose(table, table.transpose(1, 0, 2))
  tile, block = plan.make_plan(budget).square_tiles(N, k)
  assert block % tile == 0 and tile >= k and (budget > 10_000 or block // tile > 2)
  fusion = scoring.FusionParams()
  neighbours, row_max = evaluate.nearest_items(features, cameras, times, table, k=k,
                                               bin_width=1, fusion=fusion,
                                               budget_elements=budget)
  cosine = jnp.asarray(features) @ jnp.asarray(features).T
  visual = np.asarray(2 - 2 * cosine)
  st = np.asarray(2 - 2 * scoring.fused_scores(cosine, jnp.asarray(table), 1, fusion,
                                               jnp.asarray(cameras), jnp.asarray(times),
                                               jnp.asarray(cameras), jnp.asarray(times)))
  assert not np.array_equal(st, st.T)  # the equal-time asymmetry is exercised
  for kind, dist in enumerate((visual, st)):
    expected = np.argsort(dist, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(neighbours[kind], expected)
    np.testing.assert_array_equal(row_max[kind], dist.max(axis=1))


def test_nearest_items_rejects_bad_requests():
  features = np.eye(4, dtype=np.float32)
  args = (features, np.zeros(4, np.int32), np.zeros(4, np.int32))
  with pytest.raises(ValueError, match="k must be in"):
    evaluate.nearest_items(*args, None, k=5, bin_width=1, kinds=("visual",))
  with pytest.raises(ValueError, match="kinds must be among"):
    evaluate.nearest_items(*args, None, k=2, bin_width=1, kinds=("joint",))
  with pytest.raises(ValueError, match="needs an ST table"):
    evaluate.nearest_items(*args, None, k=2, bin_width=1, kinds=("visual", "st"))


def test_a_neighbourhood_larger_than_the_items_is_refused_at_once():
  """k1 = 100000 on 90 items would size the expansion sets by k1 (a hang): refused, naming
  the bound; k1 = items - 1 (every other item a neighbour) is the largest allowed."""
  query, gallery = _world(0, 20, 70)
  run = lambda k1, k2=6: evaluate.method_ranks(
      query, gallery, None, bin_width=100, fusion=scoring.FusionParams(),
      methods=("visual_rerank",), rerank=rerank.RerankParams(k1, k2, 0.3))
  with pytest.raises(ValueError, match=r"k1=100000: expected at most 89 \(one less than the 90 "
                     r"query and gallery items"):
    run(100000)
  with pytest.raises(ValueError, match=r"k2=91: expected at most the 90"):
    run(20, 91)
  assert run(89, 90)[0]["visual_rerank"].shape[0] == len(query)
