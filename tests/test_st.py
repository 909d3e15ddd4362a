import math

import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference
from jreid import scoring
from jreid import st

EPS = 1e-7


def test_histogram_hand_computed_with_eps_equal_times_and_single_camera_ids():
  # id 1: camera 0 at t=5, camera 1 at t=30 and 40 -> means 5/(1+eps), 70/(2+eps).
  #   d = m0 - m1 = -29.9999987... -> hist[1][0][int(2.99999987)] = hist[1][0][2]
  #   (the eps moves it out of bin 3).
  # id 2: cameras 0 and 2 at the same time -> d = 0 -> hist[2][0][0] (else-branch).
  # id 3: seen in one camera only -> no count.
  ids = np.array([1, 1, 1, 2, 2, 3])
  cams = np.array([0, 1, 1, 0, 2, 1])
  times = np.array([5, 30, 40, 100, 100, 7])
  params = st.STParams(bin_width=10, num_bins=10, sigma=0.0)
  hist, used, out = st.transit_histograms(ids, cams, times, 3, params)
  expected = np.zeros((3, 3, 10))
  expected[1, 0, 2] = 1
  expected[2, 0, 0] = 1
  np.testing.assert_array_equal(hist, expected)
  assert (used, out) == (2, 0)
  model = st.fit(ids, cams, times, 3, params)
  once = 1 / (1 + EPS)
  assert model.table[1, 0, 2] == once / (once + EPS)
  assert model.table[2, 0, 0] == once / (once + EPS)
  assert np.count_nonzero(model.table) == 2
  assert model.num_identities == 3


def test_one_count_per_identity_and_pair_not_per_image_pair():
  ids = np.array([4] * 6)
  cams = np.array([0, 0, 0, 1, 1, 2])
  times = np.array([100, 200, 300, 1000, 1100, 5000])
  hist, used, _ = st.transit_histograms(ids, cams, times, 3, st.STParams(num_bins=100))
  assert hist.sum() == 3 == used
  m0, m1, m2 = 600 / (3 + EPS), 2100 / (2 + EPS), 5000 / (1 + EPS)
  assert hist[1, 0, int((m1 - m0) / 100)] == 1
  assert hist[2, 0, int((m2 - m0) / 100)] == 1
  assert hist[2, 1, int((m2 - m1) / 100)] == 1
  assert np.all(np.diagonal(hist, axis1=0, axis2=1) == 0)


def test_smoothing_hand_computed_sigma_1_with_zero_padding():
  # One count at bin 1 of 10, sigma 1, taps |d| <= 3: mass at bin -1 and -2 is lost
  # (zero padding) and the result is renormalised.
  ids, cams, times = np.array([1, 1]), np.array([0, 1]), np.array([0, 15])
  params = st.STParams(bin_width=10, num_bins=10, sigma=1.0)
  model = st.fit(ids, cams, times, 2, params)
  g = lambda d: math.exp(-d * d / 2) / math.sqrt(2 * math.pi)
  h = 1 / (1 + EPS)
  smoothed = np.array([h * g(i - 1) if abs(i - 1) <= 3 else 0.0 for i in range(10)])
  expected = smoothed / (smoothed.sum() + EPS)
  np.testing.assert_allclose(model.table[1, 0], expected, rtol=1e-12, atol=0)
  assert model.table[1, 0, 5] == 0.0  # beyond 3 sigma
  assert not model.table[0, 1].any()


def test_gaussian_taps_count_and_values():
  taps = st.gaussian_taps(50.0)
  assert taps.shape == (301,)
  assert taps[150] == 1 / (50 * math.sqrt(2 * math.pi))
  np.testing.assert_allclose(taps[0], math.exp(-150 ** 2 / 5000) / (50 * math.sqrt(2 * math.pi)))
  assert taps.sum() < 1  # not renormalised


def test_out_of_range_differences_are_counted_not_crashing():
  ids, cams, times = np.array([1, 1, 2, 2]), np.array([0, 1, 0, 1]), np.array([0, 10_000, 0, 50])
  model = st.fit(ids, cams, times, 2, st.STParams(bin_width=100, num_bins=10, sigma=1.0))
  assert model.num_out_of_range == 1 and model.num_pair_counts == 1
  assert model.table[1, 0].sum() == pytest.approx(1.0, abs=1e-6)


def test_fit_matches_loop_reference_on_random_data():
  rng = np.random.default_rng(3)
  ids = rng.integers(0, 50, 1500)
  cams = rng.integers(0, 6, 1500)
  times = rng.integers(0, 150_000, 1500)
  model = st.fit(ids, cams, times, 6, st.STParams(num_bins=1600))
  expected = numpy_reference.fit_st(ids, cams, times, 6, num_bins=1600)
  np.testing.assert_allclose(model.table, expected, rtol=1e-9, atol=1e-15)


def test_save_load_round_trip(tmp_path):
  model = st.fit(np.array([1, 1]), np.array([0, 1]), np.array([0, 250]), 2,
                 st.STParams(bin_width=100, num_bins=20, sigma=2.0))
  path = str(tmp_path / "st.npz")
  model.save(path)
  loaded = st.STModel.load(path)
  np.testing.assert_array_equal(loaded.table, model.table)
  assert loaded.params == model.params
  assert loaded.num_pair_counts == 1


def test_params_validation():
  with pytest.raises(ValueError, match="bin_width"):
    st.STParams(bin_width=0)
  with pytest.raises(ValueError, match="cameras must be 0-based"):
    st.fit(np.array([1]), np.array([3]), np.array([0]), 2)


def test_st_lookup_branches():
  C, H = 3, 4
  table = np.arange(C * C * H, dtype=np.float32).reshape(C, C, H) + 1
  for c in range(C):
    table[c, c] = 0
  qc = jnp.array([0, 0, 1, 2], jnp.int32)
  qt = jnp.array([250, 100, 500, 0], jnp.int32)
  gc = jnp.array([1, 1, 1], jnp.int32)
  gt = jnp.array([100, 250, 10_000], jnp.int32)
  p = np.asarray(scoring.st_probabilities(jnp.asarray(table), 100, qc, qt, gc, gt))
  # query later than gallery: P[qc][gc][(qt-gt)//100]
  assert p[0, 0] == table[0, 1, 1]
  # gallery later: P[gc][qc][(gt-qt)//100]
  assert p[0, 1] == table[1, 0, 0]
  # equal times take the second branch
  assert p[1, 0] == table[1, 0, 0]
  # same camera -> diagonal -> 0
  assert p[2, 0] == 0 and p[2, 1] == 0
  # differences beyond the last bin -> 0, not an index error
  assert p[0, 2] == 0 and p[3, 2] == 0
  assert p[3, 0] == table[1, 2, 1]


def test_joint_score_formula():
  s = jnp.array([[0.3, -0.2]])
  p = jnp.array([[0.01, 0.0]])
  j = np.asarray(scoring.joint_scores(s, p, scoring.FusionParams()))
  expected = [1 / (1 + math.exp(-5 * 0.3)) / (1 + 2 * math.exp(-5 * 0.01)),
              1 / (1 + math.exp(1.0)) / 3]
  np.testing.assert_allclose(j[0], expected, rtol=1e-6)


def test_part_normalisation():
  f = np.array([[3.0, 4.0, 0.0, 2.0]], np.float32)
  n = scoring.l2_normalise_features(f.copy(), num_parts=2)
  np.testing.assert_allclose(n, [[0.6 / 2 ** 0.5, 0.8 / 2 ** 0.5, 0.0, 1 / 2 ** 0.5]], rtol=1e-6)
  with pytest.raises(ValueError, match="num_parts=3"):
    scoring.l2_normalise_features(f, num_parts=3)


def test_camera_names_ticks_and_pair_counts_round_trip(tmp_path):
  ids = np.array([1, 1, 2, 2, 3, 3])
  cams = np.array([0, 1, 0, 1, 2, 1])
  times = np.array([0, 4000, 0, 9000, 100, 6000])   # ms: bins of 4000 ms
  model = st.fit(ids, cams, times, params=st.STParams(bin_width=4000, num_bins=10, sigma=1.0),
                 camera_names=("gate", "hall", "lift"), ticks_per_second=1000)
  assert model.num_cameras == 3                      # from the names
  expected = np.zeros((3, 3), np.int64)
  expected[1, 0] = 2                                 # ids 1 and 2: gate -> hall
  expected[1, 2] = 1                                 # id 3: lift -> hall
  np.testing.assert_array_equal(model.pair_counts, expected)
  assert model.bin_seconds == 4.0
  path = str(tmp_path / "st.npz")
  model.save(path)
  loaded = st.STModel.load(path)
  assert loaded.camera_names == ("gate", "hall", "lift")
  assert loaded.ticks_per_second == 1000.0
  np.testing.assert_array_equal(loaded.pair_counts, expected)
  np.testing.assert_array_equal(loaded.table, model.table)


def test_model_saved_before_camera_names_still_loads(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  table = np.zeros((2, 2, 5))
  meta = dict(params=dict(bin_width=100, num_bins=5, sigma=50.0, truncate=3.0, eps=1e-7),
              num_identities=4, num_pair_counts=3, num_out_of_range=0, fingerprint="abc")
  path = str(tmp_path / "old.npz")
  np.savez(path, table=table, meta=np.asarray(json.dumps(meta)))
  loaded = st.STModel.load(path)
  assert loaded.camera_names == () and loaded.ticks_per_second == 0.0
  assert loaded.pair_counts is None and loaded.num_identities == 4
  assert loaded.bin_seconds is None


def test_camera_names_must_match_the_table():
  with pytest.raises(ValueError, match="2 camera names for a table of 3 cameras"):
    st.STModel(table=np.zeros((3, 3, 2)), params=st.STParams(), camera_names=("a", "b"))
  with pytest.raises(ValueError, match="distinct"):
    st.STModel(table=np.zeros((2, 2, 2)), params=st.STParams(), camera_names=("a", "a"))


def test_logistic_smoothing_is_finite_at_the_extremes():
  """lambda 0 is exactly 1 whatever gamma (0 * exp(200) would be 0 * inf = NaN in float32);
  lambda > 0 with exp overflowing gives 0; both ends of x stay finite."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jreid import scoring  # pylint: disable=g-import-not-at-top
  x = jnp.asarray([-1.0, 0.0, 0.5, 1.0], jnp.float32)
  assert np.asarray(scoring.logistic(x, 0.0, 200.0)).tolist() == [1.0, 1.0, 1.0, 1.0]
  assert np.asarray(scoring.logistic(x, 0, 0.0)).tolist() == [1.0, 1.0, 1.0, 1.0]
  assert np.asarray(scoring.logistic(x, 1.0, 200.0)).tolist() == [0.0, 0.5, 1.0, 1.0]
  huge = np.asarray(scoring.logistic(x, 1e30, 1e4))  # 1e30 * exp(1e4) overflows: 0
  assert huge[0] == 0.0 and huge[1] == pytest.approx(1e-30, rel=1e-6) and huge[2:].tolist() == [1.0, 1.0]
  got = np.asarray(scoring.logistic(x, 2.0, 5.0))
  np.testing.assert_allclose(got, 1 / (1 + 2 * np.exp(-5 * np.asarray(x, np.float64))), rtol=1e-6)


def test_visual_lambda_zero_ranks_by_the_st_factor_alone():
  """fusion.visual_lambda=0 makes the visual factor exactly 1 for any gamma: the joint
  ranking is the ST factor's (no NaN at gamma 200)."""
  from jreid import evaluate  # pylint: disable=g-import-not-at-top
  from jreid import records  # pylint: disable=g-import-not-at-top
  from jreid import scoring  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  n = 24
  ids, cams = np.repeat(np.arange(1, 7), 4), np.tile(np.arange(4), 6)
  times = rng.integers(0, 5000, n)
  feats = scoring.l2_normalise_features(rng.normal(size=(n, 8)).astype(np.float32))
  model = st.fit(ids, cams, times, 4, st.STParams(num_bins=60, sigma=2.0))
  rows = records.Records(ids, cams, times, feats)
  got = {}
  for gamma in (0.0, 200.0):
    fusion = scoring.FusionParams(visual_lambda=0.0, visual_gamma=gamma)
    got[gamma] = evaluate.evaluate(rows, rows, model.table, bin_width=100, fusion=fusion,
                                   methods=("st",))["st"].summary()
  assert got[0.0] == got[200.0]
  assert all(np.isfinite(v) for v in got[200.0].values())


def test_an_st_table_too_large_is_refused_before_allocating():
  """A stray camera number 2000 would ask for a 2001 x 2001 x 5000 float64 table (149 GiB)."""
  from jreid import errors  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.InputError, match=r"2001 cameras x 2001 x 5000 bins would take "
                     r"149\.2 GiB, above the 2 GiB bound: camera numbers run up to 2001"):
    st.fit(np.array([1, 1]), np.array([0, 2000]), np.array([0, 100]))
  with pytest.raises(errors.InputError, match=r"st.num_bins=1000000000"):
    st.fit(np.array([1, 1]), np.array([0, 1]), np.array([0, 100]), 2,
           st.STParams(num_bins=10 ** 9))


def test_a_kernel_wider_than_the_table_is_cut_with_the_same_values():
  """Taps beyond H - 1 bins only meet the zero padding: truncate 1e9 (10^11 taps) gives
  the values of the full-width kernel, by a direct sum."""
  rng = np.random.default_rng(0)
  hist = rng.uniform(size=(2, 2, 40))
  got = st.smooth_bins(hist, 50.0, 1e9)
  d = np.arange(40)
  kernel = np.exp(-((d[:, None] - d[None, :]) ** 2) / (2 * 50.0 ** 2)) / (50.0 * math.sqrt(2 * math.pi))
  np.testing.assert_allclose(got, hist @ kernel.T, rtol=1e-12)
  # A cut kernel gives bit for bit what the uncut one gives (the dropped taps only
  # meet zeros): sigma 5 x truncate 100 is 500 bins each side of 40.
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  uncut = scipy.ndimage.convolve1d(hist, st.gaussian_taps(5.0, 100.0), axis=-1,
                                   mode="constant", cval=0.0)
  assert len(st.gaussian_taps(5.0, 100.0)) == 1001
  np.testing.assert_array_equal(st.smooth_bins(hist, 5.0, 100.0), uncut)
  assert len(st.gaussian_taps(50.0, 3.0)) == 301  # the reference's kernel is unchanged


@pytest.mark.parametrize("content, message", [
    (b"table,meta\n1,2\n", r"is not an .npz file: expected an ST model written by STModel.save"),
    ("no_meta", r"with the keys 'table' and 'meta'; found \['table'\]"),
    ("bad_meta", r"its 'meta' is not an ST model's"),
])
def test_a_bad_st_model_file_names_the_file(tmp_path, content, message):
  from jreid import errors  # pylint: disable=g-import-not-at-top
  path = tmp_path / "st_model.npz"
  if content == "no_meta":
    np.savez(path, table=np.zeros((2, 2, 3)))
  elif content == "bad_meta":
    np.savez(path, table=np.zeros((2, 2, 3)), meta=np.asarray('{"params": 3}'))
  else:
    path.write_bytes(content)
  with pytest.raises(errors.InputError, match=message):
    st.STModel.load(str(path))


def test_bin_text_names_seconds_and_ticks():
  from jreid import st as st_lib  # pylint: disable=g-import-not-at-top
  assert st_lib.bin_text(4000, 1000.0) == "4 s (4000 ticks)"
  assert st_lib.bin_text(100, 25.0) == "4 s (100 ticks)"
  assert st_lib.bin_text(100, 0.0) == "100 ticks"
