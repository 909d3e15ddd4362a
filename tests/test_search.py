import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jreid import protocol
from jreid import scoring
from jreid import search
from jreid import st
from jreid import stamps
from jreid import tracks
from jreid.data import synthetic
from jreid.records import Records

FUSION = scoring.FusionParams()


def brute_force_top_k(query, gallery, st_model, fusion, k) -> protocol.TopK:
  """The oracle of ``search.top_k``: the whole [Q, G] score matrix and a stable numpy
  argsort."""
  visual = np.asarray(scoring.cosine_scores(jnp.asarray(query.features, jnp.float32),
                                            jnp.asarray(gallery.features, jnp.float32)))
  if st_model is None:
    index = np.argsort(-visual, axis=1, kind="stable")[:, :k]
    return protocol.TopK(index, np.take_along_axis(visual, index, 1), None, None, "visual")
  prob = np.asarray(scoring.st_probabilities(
      jnp.asarray(st_model.table, jnp.float32), int(st_model.params.bin_width),
      jnp.asarray(query.cameras, jnp.int32), jnp.asarray(query.times, jnp.int32),
      jnp.asarray(gallery.cameras, jnp.int32), jnp.asarray(gallery.times, jnp.int32)))
  joint = np.asarray(scoring.joint_scores(jnp.asarray(visual), jnp.asarray(prob), fusion))
  index = np.argsort(-joint, axis=1, kind="stable")[:, :k]
  take = lambda x: np.take_along_axis(x, index, 1)
  return protocol.TopK(index, take(visual), take(prob), take(joint), "joint")


def random_case(seed=0, Q=7, G=50, D=8, C=3, H=6, width=10):
  """Dyadic features (exact dot products in any order) and ties: gallery rows 10..14
  repeat rows 0..4 (feature, camera and time), so equal scores must rank lower index first."""
  rng = np.random.default_rng(seed)
  gf = rng.integers(-4, 5, (G, D)).astype(np.float32) / 8
  gc = rng.integers(0, C, G)
  gt = rng.integers(0, width * (H + 2), G)
  gf[10:15], gc[10:15], gt[10:15] = gf[0:5], gc[0:5], gt[0:5]
  qf = rng.integers(-4, 5, (Q, D)).astype(np.float32) / 8
  qf[0] = gf[0]
  query = Records(np.arange(Q), rng.integers(0, C, Q), rng.integers(0, width * (H + 2), Q),
                  qf, np.asarray([f"q{i}.jpg" for i in range(Q)]))
  gallery = Records(np.arange(G) % 9, gc, gt, gf, np.asarray([f"g{i}.jpg" for i in range(G)]))
  table = rng.random((C, C, H))
  for c in range(C):
    table[c, c] = 0
  model = st.STModel(table=table, params=st.STParams(bin_width=width, num_bins=H))
  return query, gallery, model


@pytest.mark.parametrize("with_st", [True, False])
@pytest.mark.parametrize("chunk_elements", [150, 1 << 20])   # chunks of 3 (padded) or all
def test_top_k_equals_brute_force_argsort(with_st, chunk_elements):
  query, gallery, model = random_case()
  model = model if with_st else None
  got = search.top_k(query, gallery, model, FUSION, k=12, chunk_elements=chunk_elements)
  want = brute_force_top_k(query, gallery, model, FUSION, k=12)
  np.testing.assert_array_equal(got.index, want.index)
  np.testing.assert_array_equal(got.visual, want.visual)
  assert got.ranked_by == want.ranked_by == ("joint" if with_st else "visual")
  if with_st:
    np.testing.assert_array_equal(got.st_probability, want.st_probability)
    np.testing.assert_array_equal(got.joint, want.joint)
  else:
    assert got.joint is None and got.st_probability is None
  # Query 0 equals gallery rows 0 and 10 (identical rows): the tie goes to row 0.
  assert got.index[0, :2].tolist() == [0, 10]
  assert got.visual[0, 0] == got.visual[0, 1]


@pytest.mark.parametrize("with_st", [True, False])
def test_leave_out_junk_ranks_as_the_protocol(with_st):
  """Gallery id -1 and the query's id in the query's camera never appear; the rest keep
  the brute-force order."""
  query, gallery, model = random_case(seed=3)
  model = model if with_st else None
  ids = gallery.person_ids.copy()
  ids[[3, 20]] = -1
  gallery = Records(ids, gallery.cameras, gallery.times, gallery.features, gallery.names)
  got = search.top_k(query, gallery, model, FUSION, k=8, chunk_elements=150,
                     leave_out_junk=True)
  full = brute_force_top_k(query, gallery, model, FUSION, k=len(gallery))
  for q in range(len(query)):
    junk = (ids == -1) | ((ids == query.person_ids[q]) & (gallery.cameras == query.cameras[q]))
    want = [j for j in full.index[q] if not junk[j]][:8]
    assert got.index[q].tolist() == want


def test_ranked_list_picture_leaves_places_empty_after_the_last_real_result(tmp_path,
                                                                             monkeypatch):
  """A query with fewer than k results (the rest left out as junk) draws only those: the
  junk items are never loaded nor framed as results."""
  from jreid import plots
  q = Records(np.array([7]), np.array([0]), np.array([0]), np.ones((1, 2), np.float32),
              names=np.array(["q"]))
  # Gallery: 7 in the query's camera (junk), id -1 (junk), three others.
  g = Records(np.array([7, -1, 7, 3, 4]), np.array([0, 1, 1, 2, 1]), np.zeros(5, np.int64),
              scoring.l2_normalise_features(np.array(
                  [[1, 0], [1, 0.1], [1, 0.2], [1, 0.5], [0, 1]], np.float32)),
              names=np.array([f"g{i}" for i in range(5)]))
  top = search.top_k(q, g, None, FUSION, k=5, leave_out_junk=True)
  assert top.index[0, :3].tolist() == [3, 2, 4] and not np.isfinite(top.score[0, 3:]).any()
  loaded, figures = [], []
  save = plots._save
  monkeypatch.setattr(plots, "_save", lambda fig, path, **kw: figures.append(fig) or
                      save(fig, path, **kw))
  out = search.ranked_list_picture(
      top, q, g, str(tmp_path / "ranked.png"),
      lambda name: loaded.append(name) or np.zeros((8, 4, 3), np.uint8), num_queries=1, k=5)
  assert Image.open(out).format == "PNG"
  assert loaded == ["q", "g3", "g2", "g4"]
  axes = figures[0].axes
  assert [len(ax.images) for ax in axes[:6]] == [1, 1, 1, 1, 0, 0]
  assert [ax.axison for ax in axes[4:6]] == [False, False]


def test_ties_go_to_the_lower_index():
  f = np.ones((5, 2), np.float32) / np.sqrt(2)
  gallery = Records(np.zeros(5, np.int64), np.zeros(5, np.int64), np.zeros(5, np.int64), f)
  query = Records(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64), f[:1])
  assert search.top_k(query, gallery, None, FUSION, k=3).index.tolist() == [[0, 1, 2]]


def test_hand_computed_st_reorders_visual_and_beyond_last_bin_is_counted():
  # Cameras 0 -> 1 take 1-2 bins (10 ticks each); query in camera 1 at t=25.
  table = np.zeros((2, 2, 3))
  table[1, 0, 1] = 0.8
  model = st.STModel(table=table, params=st.STParams(bin_width=10, num_bins=3))
  gallery_f = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]], np.float32)
  gallery = Records(np.array([1, 2, 3]), np.array([0, 0, 0]), np.array([20, 10, 100]),
                    gallery_f)
  query = Records(np.array([2]), np.array([1]), np.array([25]),
                  np.array([[1.0, 0.0]], np.float32))
  got = search.top_k(query, gallery, model, FUSION, k=3)
  f = lambda x, lam, g: 1 / (1 + lam * math.exp(-g * x))
  joints = [f(1.0, 1, 5) * f(0.0, 2, 5),     # dt 5 -> bin 0 -> p 0
            f(0.8, 1, 5) * f(0.8, 2, 5),     # dt 15 -> bin 1 -> p 0.8
            f(0.6, 1, 5) * f(0.0, 2, 5)]     # dt 75 -> bin 7 >= 3: beyond the last bin
  assert got.index.tolist() == [[1, 0, 2]]
  np.testing.assert_allclose(got.joint[0], [joints[1], joints[0], joints[2]], rtol=1e-6)
  np.testing.assert_allclose(got.st_probability[0], [0.8, 0.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(got.visual[0], [0.8, 1.0, 0.6], rtol=1e-6)
  assert got.num_beyond_last_bin == 1 and got.num_pairs == 3


def test_camera_unknown_to_the_model_gets_zero_st_probability_not_an_index_error():
  table = np.full((2, 2, 3), 0.5)
  model = st.STModel(table=table, params=st.STParams(bin_width=10, num_bins=3))
  f = np.eye(2, dtype=np.float32)
  gallery = Records(np.array([1, 2]), np.array([0, 1]), np.array([0, 0]), f)
  query = Records(np.array([1]), np.array([5]), np.array([5]), f[:1])   # camera 5: unseen
  got = search.top_k(query, gallery, model, FUSION, k=2)
  np.testing.assert_array_equal(got.st_probability, [[0.0, 0.0]])
  assert got.num_beyond_last_bin == 0   # unseen cameras are not "beyond the last bin"


def test_bad_inputs():
  query, gallery, model = random_case()
  with pytest.raises(ValueError, match="gallery records have no features"):
    search.top_k(query, gallery.with_features(None), model)
  with pytest.raises(ValueError, match="query features have 3 dims, gallery features 8"):
    search.top_k(query.with_features(query.features[:, :3]), gallery, model)
  with pytest.raises(ValueError, match="k must be >= 1"):
    search.top_k(query, gallery, model, k=0)
  assert search.top_k(query, gallery, model, k=500).index.shape == (7, 50)


def test_rank_lists_json(tmp_path):
  query, gallery, model = random_case()
  query = query.select(np.array([0, 1]))
  query = Records(np.array([3, 0]), query.cameras, query.times, query.features, query.names)
  result = search.top_k(query, gallery, model, FUSION, k=4)
  lists = search.rank_lists(result, query, gallery, camera_names=("a", "b", "c"),
                            format_time=lambda t: t / 10)
  path = search.write_rank_lists(str(tmp_path / search.RANK_LISTS_FILE), lists, note="x")
  data = json.loads(open(path).read())
  assert data["ranked_by"] == "joint" and data["k"] == 4 and data["note"] == "x"
  q0 = data["queries"][0]
  assert q0["image"] == "q0.jpg" and q0["camera"] == "abc"[query.cameras[0]]
  assert q0["time"] == query.times[0] / 10 and q0["person_id"] == 3
  first = q0["results"][0]
  g = int(result.index[0, 0])
  assert first == dict(rank=1, image=f"g{g}.jpg", camera="abc"[gallery.cameras[g]],
                       time=gallery.times[g] / 10, person_id=int(gallery.person_ids[g]),
                       visual=float(result.visual[0, 0]),
                       st_probability=float(result.st_probability[0, 0]),
                       joint=float(result.joint[0, 0]), match=bool(gallery.person_ids[g] == 3))
  # Distractor queries (id 0) match nothing.
  assert not any(r["match"] for r in data["queries"][1]["results"])
  unlabelled = search.rank_lists(result, query, gallery, labelled=False)
  assert "person_id" not in unlabelled["queries"][0]
  assert "match" not in unlabelled["queries"][0]["results"][0]
  assert unlabelled["queries"][0]["camera"] == f"c{query.cameras[0] + 1}"


def test_end_to_end_on_the_synthetic_world_table(tmp_path):
  """Fit from tracks.csv (train split), search query vs gallery with features made
  from identity centres + noise: the true match is first for most queries."""
  params = synthetic.WorldParams(num_train_ids=60, num_test_ids=30, num_cameras=5,
                                 image_height=16, image_width=8, num_junk=10,
                                 num_distractors=20, group_size=3, seed=11)
  synthetic.generate(str(tmp_path), params)
  table = tracks.read_table(str(tmp_path / synthetic.TRACKS_FILE), require_labels=True)
  base = tracks.time_base(table)
  fitted = search.fit_st_from_table(
      table, st.STParams(bin_width=tracks.bin_width_ticks(4.0), num_bins=5000))
  model = fitted.model
  assert fitted.num_rows == int((table.splits == "train").sum())
  assert model.camera_names == ("cam1", "cam2", "cam3", "cam4", "cam5")
  names = tracks.camera_names(table, known=model.camera_names)
  query = tracks.to_records(table.split("query"), names, base)
  gallery = tracks.to_records(table.split("gallery"), names, base)
  rng = np.random.default_rng(0)
  D = 16
  centres = {}

  def features(r):
    rows = []
    for pid in r.person_ids:
      if pid <= 0:   # junk and distractors: anyone
        rows.append(rng.normal(size=D))
        continue
      if pid not in centres:   # identities in threes that look alike
        group = centres.setdefault(("group", pid // 3), rng.normal(size=D))
        centres[pid] = group + 0.35 * rng.normal(size=D)
      rows.append(centres[pid] + 0.35 * rng.normal(size=D))
    return scoring.l2_normalise_features(np.asarray(rows, np.float32))

  query, gallery = query.with_features(features(query)), gallery.with_features(features(gallery))
  joint = search.top_k(query, gallery, model, FUSION, k=10, chunk_elements=4096)
  visual = search.top_k(query, gallery, None, FUSION, k=10)
  first_joint = search.matches(joint, query, gallery)[:, 0].mean()
  first_visual = search.matches(visual, query, gallery)[:, 0].mean()
  print(f"rank-1: joint {first_joint:.3f}, visual {first_visual:.3f}")
  assert first_joint >= 0.8, (first_joint, first_visual)
  assert first_joint >= first_visual
  lists = search.rank_lists(joint, query, gallery, model.camera_names, base.format)
  assert lists["queries"][0]["camera"].startswith("cam")
  assert all(q["results"][0]["match"] == bool(m) for q, m in
             zip(lists["queries"], search.matches(joint, query, gallery)[:, 0]))
  out = search.ranked_list_picture(
      joint, query, gallery, str(tmp_path / "ranked.png"),
      search.load_rgb, model.camera_names, num_queries=3,
      k=5)
  assert Image.open(out).size[0] > 200


def test_attach_features_by_path_file_name_or_order():
  rows = Records(np.array([1, 2]), np.array([0, 1]), np.array([0, 5]),
                 names=np.array(["/data/t/a.jpg", "/data/t/sub/b.jpg"]))
  f = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
  got = search.attach_features(rows, f, np.array(["b.jpg", "/data/t/a.jpg", "c.jpg"]), "x.npz")
  np.testing.assert_array_equal(got.features, [[0, 1], [1, 0]])
  got = search.attach_features(rows, f[:2], None, "x.npz")
  np.testing.assert_array_equal(got.features, f[:2])
  with pytest.raises(ValueError, match="x.npz: 3 feature rows for 2 table rows"):
    search.attach_features(rows, f, None, "x.npz")
  with pytest.raises(ValueError, match=r"x.npz: no feature rows named like .*sub/b.jpg"):
    search.attach_features(rows, f, np.array(["a.jpg", "c.jpg", "d.jpg"]), "x.npz")
  with pytest.raises(ValueError, match=r"x.npz: 2 feature rows named like .*b.jpg"):
    search.attach_features(rows, f, np.array(["/data/t/a.jpg", "1/b.jpg", "2/b.jpg"]), "x.npz")
  # Identities check the match: the file's rows in another order without names.
  with pytest.raises(ValueError, match=r"x.npz: rows matched by order disagree on the identity "
                                       r"in 2 of 2 rows, e.g. '/data/t/a.jpg': 1 in the table, "
                                       r"2 in the file"):
    search.attach_features(rows, f[:2], None, "x.npz", feature_ids=np.array([2, 1]))
  got = search.attach_features(rows, f, np.array(["b.jpg", "/data/t/a.jpg", "c.jpg"]), "x.npz",
                               feature_ids=np.array([2, 1, 7]))
  np.testing.assert_array_equal(got.features, [[0, 1], [1, 0]])


def test_fit_from_table_uses_train_rows_and_counts_junk_and_distractors(tmp_path):
  path = tmp_path / "t.csv"
  path.write_text("person_id,camera,time,split\n"
                  "1,b,0,train\n1,a,15,train\n2,b,0,train\n2,a,35,train\n"
                  "-1,a,5,train\n0,b,7,train\n0,a,9,train\n3,b,0,gallery\n3,a,900,query\n")
  table = tracks.read_table(str(path), check_images=False)
  fitted = search.fit_st_from_table(table, st.STParams(bin_width=10_000, num_bins=5, sigma=0))
  assert (fitted.num_rows, fitted.num_junk, fitted.num_distractors) == (4, 1, 2)
  assert fitted.model.camera_names == ("a", "b")
  # ids 1 and 2: seen in a 15 s and 35 s after b -> P[a, b] bins 1 and 3 (10 s bins).
  np.testing.assert_array_equal(fitted.model.pair_counts, [[0, 2], [0, 0]])
  assert fitted.model.table[0, 1, 1] > 0 and fitted.model.table[0, 1, 3] > 0
  assert fitted.model.table[0, 1, 0] == fitted.model.table[0, 1, 2] == 0
  unlabelled = tmp_path / "u.csv"
  unlabelled.write_text("camera,time\na,1\n")
  with pytest.raises(tracks.TracksError, match="needs identities: add a person_id column"):
    search.fit_st_from_table(tracks.read_table(str(unlabelled), check_images=False),
                             st.STParams())


def test_image_file_batches_equal_the_eval_batches_of_the_same_images(world, builder):
  """Extraction from files (a table's or a folder's images) sees exactly the pixels that
  extraction from the prepared splits sees."""
  import os  # pylint: disable=g-import-not-at-top
  from jreid.data import image_files  # pylint: disable=g-import-not-at-top
  from jreid.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  names = data_pipeline.read_records(builder, "query")["filename"].astype(str)
  folder = os.path.join(world[0], synthetic.ROOT_NAME, "query")
  paths = [os.path.join(folder, n) for n in names]
  want, n_want = data_pipeline.eval_batches(builder, "query", 8, (32, 16))
  got, n_got = image_files.batches(paths, 8, (32, 16))
  assert n_got == n_want == -(-len(paths) // 8)
  want, got = list(want), list(got)
  for w, g in zip(want, got):
    np.testing.assert_array_equal(g["mask"], w["mask"])
    np.testing.assert_array_equal(g["index"][g["mask"]], w["index"][w["mask"]])
    np.testing.assert_array_equal(g["image"], w["image"])
  assert sorted(tracks.folder_records(folder).names.tolist()) == sorted(paths)


def _features_file(path, query, gallery, seed=0, noise=0.35, dims=16):
  """A features file for the table's query and gallery rows: identity centres + noise,
  named by image path, rows in reverse order (so matching by name is exercised)."""
  rng = np.random.default_rng(seed)
  centres = {}

  def make(r):
    rows = []
    for pid in r.person_ids:
      if pid <= 0:
        rows.append(rng.normal(size=dims))
        continue
      if pid not in centres:
        centres[pid] = rng.normal(size=dims)
      rows.append(centres[pid] + noise * rng.normal(size=dims))
    return np.asarray(rows, np.float32)[::-1]

  np.savez(path, query_f=make(query), query_label=query.person_ids[::-1],
           query_cam=query.cameras[::-1] + 1, query_frames=query.times[::-1],
           query_names=query.names[::-1], gallery_f=make(gallery),
           gallery_label=gallery.person_ids[::-1], gallery_cam=gallery.cameras[::-1] + 1,
           gallery_frames=gallery.times[::-1], gallery_names=gallery.names[::-1])


def test_search_job_from_a_features_file(tmp_path, caplog):
  from experiments import search as search_config  # pylint: disable=g-import-not-at-top
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  params = synthetic.WorldParams(num_train_ids=40, num_test_ids=12, num_cameras=4,
                                 image_height=32, image_width=16, num_junk=3,
                                 num_distractors=5, group_size=3, seed=3)
  world = tmp_path / "world"
  synthetic.generate(str(world), params)
  table_path = str(world / synthetic.TRACKS_FILE)
  table = tracks.read_table(table_path)
  base = tracks.time_base(table)
  names = tracks.camera_names(table)
  q = tracks.to_records(table.split("query"), names, base)
  g = tracks.to_records(table.split("gallery"), names, base)
  _features_file(str(tmp_path / "f.npz"), q, g)
  config = search_config.get_config()
  config.tracks.train = table_path
  config.tracks.query = table_path
  config.features = str(tmp_path / "f.npz")
  config.eval.methods = ("visual", "st")
  config.eval.ranked_list_queries = 2
  config.compilation_cache_dir = ""
  workdir = str(tmp_path / "search")
  summary = jobs.run(config, workdir)
  assert summary["queries"] == len(q) and summary["gallery"] == len(g)
  assert summary["true_match_first"] >= 0.8
  lists = json.loads(open(f"{workdir}/rank_lists.json").read())
  assert lists["camera_names"] == ["cam1", "cam2", "cam3", "cam4"]
  assert len(lists["queries"]) == len(q) and lists["k"] == 10
  first = lists["queries"][0]
  assert first["image"] == str(q.names[0]) and first["time"] == base.format(int(q.times[0]))
  assert {"visual", "st_probability", "joint", "match", "camera"} <= set(first["results"][0])
  for f in ("ranked_lists.png", "st_model.npz", "st_distributions.png", "results.json"):
    assert os.path.exists(f"{workdir}/{f}"), f
  assert st.STModel.load(f"{workdir}/st_model.npz").camera_names == ("cam1", "cam2", "cam3",
                                                                      "cam4")
  # The saved model, a gallery table of its own, and a camera the model never saw.
  other = tmp_path / "gallery.csv"
  rows = open(table_path).read().splitlines()
  other.write_text("\n".join([rows[0]] + [r.replace(",cam4,", ",cam9,") for r in rows[1:]
                                          if r.endswith(",gallery")]) + "\n")
  config.st_model = f"{workdir}/st_model.npz"
  config.tracks.train = ""
  config.tracks.gallery = str(other)
  caplog.clear()
  summary = jobs.run(config, str(tmp_path / "search2"))
  assert summary["gallery"] == len(g)
  unseen = int((g.cameras == names.index("cam4")).sum())
  assert any(f"{unseen} gallery detections come from cameras the ST model has never seen "
             f"(cam9: {unseen})" in r.getMessage() for r in caplog.records)
  lists = json.loads(open(f"{tmp_path}/search2/rank_lists.json").read())
  assert lists["camera_names"] == ["cam1", "cam2", "cam3", "cam4", "cam9"]
  # An unlabelled search in the first (labelled) search's workdir: new rank lists, and
  # the labelled run's results, CMC and plot are gone rather than standing as its own.
  header, *body = open(table_path).read().splitlines()
  drop = header.split(",").index("person_id")
  unlabelled = tmp_path / "unlabelled.csv"
  unlabelled.write_text("".join(",".join(c for i, c in enumerate(r.split(",")) if i != drop)
                                + "\n" for r in [header] + body))
  config.st_model, config.tracks.train = "", table_path
  config.tracks.query, config.tracks.gallery = str(unlabelled), ""
  summary = jobs.run(config, workdir)
  assert "true_match_first" not in summary and "results" not in summary
  for f in ("results.json", "cmc.json", "cmc.png"):
    assert not os.path.exists(f"{workdir}/{f}"), f
  lists = json.loads(open(f"{workdir}/rank_lists.json").read())
  assert "match" not in lists["queries"][0]["results"][0]


def test_extract_then_search_from_the_table_equals_the_main_job(tmp_path, monkeypatch):
  """A tiny trained workdir; its world's tracks.csv -> extract -> search: the extracted
  features equal the main job's (same images, by name; to float32 rounding, since on a
  CPU the 1x1 convolutions are matrix products whose rounding depends on an image's
  place in its batch) and the search job's evaluation (times in ms, bins of 4 s) equals
  the main job's (frames, bins of 100 frames). Both extractions compile with the
  trained model's convolution options."""
  from experiments import extract as extract_config  # pylint: disable=g-import-not-at-top
  from experiments import search as search_config  # pylint: disable=g-import-not-at-top
  from experiments import tiny  # pylint: disable=g-import-not-at-top
  from jreid import feature_files  # pylint: disable=g-import-not-at-top
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  from jreid import errors  # pylint: disable=g-import-not-at-top
  from jreid import names as names_lib  # pylint: disable=g-import-not-at-top
  from jreid import features as features_lib  # pylint: disable=g-import-not-at-top
  from jreid import stages  # pylint: disable=g-import-not-at-top
  options_seen = []
  make = features_lib.make_extract_step
  monkeypatch.setattr(features_lib, "make_extract_step", lambda *a, **k: options_seen.append(
      a[3] if len(a) > 3 else k.get("compiler_options")) or make(*a, **k))
  trained = tmp_path / "trained"
  config = tiny.get_config()
  config.train.epochs = 1
  config.eval.methods = ("visual", "st")
  config.compilation_cache_dir = ""
  jobs.run(config, str(trained))
  table = str(trained / "synthetic_world" / synthetic.TRACKS_FILE)
  config = extract_config.get_config()
  config.trained_workdir, config.tracks.query = str(trained), table
  config.compilation_cache_dir = ""
  # Extracting into the trained workdir itself would replace the main job's features.npz.
  features = (trained / "features.npz").read_bytes()
  with pytest.raises(errors.InputError, match="holds the products of the train_and_evaluate "
                     "job .*; the extract job would replace or reuse them"):
    jobs.run(config, str(trained))
  assert (trained / "features.npz").read_bytes() == features
  jobs.run(config, str(tmp_path / "extract"))
  expected = stages.compiler_options(tiny.get_config())  # on a CPU: layers.CPU_COMPILER_OPTIONS
  assert options_seen == [expected, expected], options_seen
  stamp = stamps.read(str(tmp_path / "extract"), "extract")
  assert stamp["run"]["job"] == "extract" and stamp["trained_workdir"] == str(trained)
  assert stamp["products"] == {"features.npz": stamps.content_digest(
      str(tmp_path / "extract" / "features.npz"))}
  config = search_config.get_config()
  config.tracks.train = config.tracks.query = table
  config.features = str(tmp_path / "extract" / "features.npz")
  config.eval.methods = ("visual", "st")
  config.compilation_cache_dir = ""
  jobs.run(config, str(tmp_path / "search"))
  q_main, g_main, _ = feature_files.load_features(str(trained / "features.npz"))
  q_ext, g_ext, extras = feature_files.load_features(str(tmp_path / "extract" / "features.npz"))
  for main, ext, names in ((q_main, q_ext, extras["query_names"]),
                           (g_main, g_ext, extras["gallery_names"])):
    parsed = names_lib.parse_names([os.path.basename(str(n)) for n in names])
    key = lambda r: list(zip(r.person_ids.tolist(), r.cameras.tolist(), r.times.tolist()))
    where = {k: i for i, k in enumerate(key(parsed))}
    order = [where[k] for k in key(main)]
    np.testing.assert_allclose(ext.features[order], main.features, rtol=1e-5, atol=1e-7)
  want = json.loads((trained / "results.json").read_text())
  got = json.loads((tmp_path / "search" / "results.json").read_text())
  assert got.keys() == want.keys() == {"visual", "st", "run"}
  assert (got["run"]["job"], want["run"]["job"]) == ("search", "train_and_evaluate")
  del got["run"], want["run"]
  for kind in want:   # the gallery order differs: sums may differ in the last bit
    assert got[kind] == {k: pytest.approx(v, rel=1e-12) for k, v in want[kind].items()}
  lists = json.loads((tmp_path / "search" / "rank_lists.json").read_text())
  assert len(lists["queries"]) == len(q_main)
  assert (tmp_path / "search" / "ranked_lists.png").exists()


def test_extract_job_settings_are_checked_before_reading(tmp_path):
  from experiments import extract as extract_config  # pylint: disable=g-import-not-at-top
  from jreid import errors  # pylint: disable=g-import-not-at-top
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  config = extract_config.get_config()
  config.compilation_cache_dir = ""
  config.eval.batch_size = 0
  with pytest.raises(errors.InputError,
                     match=r"config: eval.batch_size=0: expected a whole number >= 1; "
                           r"extract: set trained_workdir .* and tracks.query .*"):
    jobs.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_search_job_settings_are_checked_before_reading(tmp_path):
  from experiments import search as search_config  # pylint: disable=g-import-not-at-top
  from jreid import errors  # pylint: disable=g-import-not-at-top
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  config = search_config.get_config()
  config.compilation_cache_dir = ""
  with pytest.raises(errors.InputError,
                     match=r"config: search: set one of features .* and trained_workdir .*; "
                           r"search: set one of tracks.train .* and st_model .*; search: "
                           r"tracks.query is empty"):
    jobs.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()  # validation comes before the workdir is made
  config.features, config.tracks.train = "f.npz", "t.csv"
  config.tracks.query = str(tmp_path / "missing.csv")
  with pytest.raises(errors.InputError, match="tracks table 't.csv' does not exist"):
    jobs.run(config, str(tmp_path / "w"))


def test_evaluation_writes_rank_lists(tmp_path):
  """The evaluation stage (main job, features-file job) writes rank_lists.json too."""
  from experiments import base  # pylint: disable=g-import-not-at-top
  from jreid import stages  # pylint: disable=g-import-not-at-top
  query, gallery, model = random_case()
  gallery = Records(np.where(np.arange(len(gallery)) % 7 == 0, 3, gallery.person_ids),
                    gallery.cameras, gallery.times, gallery.features, gallery.names)
  query = Records(np.full(len(query), 3), (gallery.cameras[:7] + 1) % 3, query.times,
                  query.features, query.names)
  config = base.st_and_eval_config()
  config.eval.methods = ("visual", "st")
  config.eval.top_k = 5
  stages.evaluate(query, gallery, model, config, str(tmp_path))
  data = json.loads((tmp_path / search.RANK_LISTS_FILE).read_text())
  # The lists come from the evaluation's pass: the same items and scores as a search
  # (dyadic features: exact scores in any tiling).
  want = search.top_k(query, gallery, model, stages.fusion_params(config), 5,
                      leave_out_junk=True)
  assert data["ranked_by"] == "joint" and data["k"] == 5 and data["time_unit"] == "frames"
  assert [[r["image"] for r in q["results"]] for q in data["queries"]] == [
      [f"g{i}.jpg" for i in row] for row in want.index.tolist()]
  for field, values in (("visual", want.visual), ("st_probability", want.st_probability),
                        ("joint", want.joint)):
    assert [[r[field] for r in q["results"]] for q in data["queries"]] == values.tolist()
  assert data["queries"][0]["results"][0]["camera"] == f"c{gallery.cameras[want.index[0, 0]] + 1}"


def test_rank_lists_leave_out_junk_and_are_standard_json(tmp_path):
  """eval.top_k beyond the non-junk gallery: the lists end at the last real item, and the
  file parses with a parser that rejects NaN and infinities."""
  from experiments import base  # pylint: disable=g-import-not-at-top
  from jreid import stages  # pylint: disable=g-import-not-at-top
  query, gallery, model = random_case()
  ids = np.where(np.arange(len(gallery)) < 40, -1, 3)  # 10 real items, 40 junk (-1)
  gallery = Records(ids, gallery.cameras, gallery.times, gallery.features, gallery.names)
  query = Records(np.full(len(query), 3), query.cameras, query.times, query.features,
                  query.names)
  config = base.st_and_eval_config()
  config.eval.methods = ("visual", "st")
  config.eval.top_k = 20
  stages.evaluate(query, gallery, model, config, str(tmp_path))

  def refuse(name):
    raise ValueError(f"non-standard JSON constant {name}")
  data = json.loads((tmp_path / search.RANK_LISTS_FILE).read_text(), parse_constant=refuse)
  for q, camera in zip(data["queries"], query.cameras.tolist()):
    # The real items: id 3 in another camera (matches); id 3 in the query's camera is junk.
    real = int(((ids == 3) & (gallery.cameras != camera)).sum())
    assert 0 < real < 20 and len(q["results"]) == real
    assert all(r["person_id"] == 3 and r["match"] for r in q["results"])


def test_write_json_refuses_non_finite_numbers(tmp_path):
  from jreid import files  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError):
    files.write_json(str(tmp_path / "x.json"), {"a": -math.inf})
  assert not (tmp_path / "x.json").exists()


def test_files_that_are_not_images_are_named(tmp_path):
  """PIL (pictures) and TensorFlow (extraction) errors become one line naming the file."""
  from jreid import errors  # pylint: disable=g-import-not-at-top
  from jreid.data import image_files  # pylint: disable=g-import-not-at-top
  good = tmp_path / "good.jpg"
  Image.fromarray(np.full((8, 4, 3), 128, np.uint8)).save(good)
  text = tmp_path / "notes.jpg"
  text.write_text("not an image")
  folder = tmp_path / "folder.jpg"
  folder.mkdir()
  assert search.load_rgb(str(good)).shape == (8, 4, 3)
  with pytest.raises(errors.InputError, match=r"notes.jpg: not an image PIL can read"):
    search.load_rgb(str(text))
  with pytest.raises(errors.InputError, match=r"folder.jpg: a folder, not an image"):
    search.load_rgb(str(folder))
  for bad, message in ((text, r"notes.jpg: not an image \(expected JPEG, PNG"),
                       (folder, r"folder.jpg: a folder, not an image")):
    batches, n = image_files.batches([str(good), str(bad), str(good)], 2, (8, 4))
    with pytest.raises(errors.InputError, match=message):
      list(batches)


def test_a_table_without_images_and_named_features_is_an_error(tmp_path):
  from experiments import search as search_config  # pylint: disable=g-import-not-at-top
  from jreid import errors  # pylint: disable=g-import-not-at-top
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  rows = ["camera,time,person_id,split"]
  for pid in range(1, 6):
    rows += [f"c1,{pid * 10},{pid},query", f"c2,{pid * 10 + 5},{pid},gallery",
             f"c1,{pid * 100},{pid},train", f"c2,{pid * 100 + 7},{pid},train"]
  (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
  rng = np.random.default_rng(0)
  side = lambda cam, prefix: Records(np.arange(1, 6), np.full(5, cam), np.arange(5) * 10,
                                     rng.normal(size=(5, 4)).astype(np.float32),
                                     np.asarray([f"{prefix}{i}.jpg" for i in range(5)]))
  q, g = side(0, "q"), side(1, "g")
  _features_file(str(tmp_path / "f.npz"), q, g)
  config = search_config.get_config()
  config.tracks.train = config.tracks.query = str(tmp_path / "t.csv")
  config.features, config.compilation_cache_dir = str(tmp_path / "f.npz"), ""
  config.rerank.enabled = False  # 10 items: too few for k1 = 20
  with pytest.raises(errors.InputError, match=r"t.csv: no image column, so its query rows "
                     r"cannot be matched to the named features of .*f.npz \(query_names\)"):
    jobs.run(config, str(tmp_path / "w"))


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  from experiments import search as search_config  # pylint: disable=g-import-not-at-top
  from jreid import errors  # pylint: disable=g-import-not-at-top
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  config = search_config.get_config()
  config.tracks.train = config.tracks.query = config.features = "x"
  (tmp_path / "w").write_text("a file")
  with pytest.raises(errors.InputError, match=r"workdir .*w is a file: expected a folder"):
    jobs.run(config, str(tmp_path / "w"))
  with pytest.raises(errors.InputError, match=r"workdir .*/w/sub cannot be created"):
    jobs.run(config, str(tmp_path / "w" / "sub"))


def test_the_extract_job_on_a_table_without_gallery_rows_says_so(tmp_path):
  from experiments import extract as extract_config  # pylint: disable=g-import-not-at-top
  from jreid import errors  # pylint: disable=g-import-not-at-top
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  for i in range(2):
    Image.fromarray(np.full((8, 4, 3), 100, np.uint8)).save(tmp_path / f"{i}.jpg")
  (tmp_path / "t.csv").write_text("image,camera,time,split\n0.jpg,c1,1,query\n1.jpg,c2,2,query\n")
  config = extract_config.get_config()
  config.trained_workdir, config.tracks.query = str(tmp_path / "trained"), str(tmp_path / "t.csv")
  config.compilation_cache_dir = ""
  with pytest.raises(errors.InputError, match=r"extract: no gallery rows in .*t.csv \(its split "
                     r"column names no 'gallery' row\)"):
    jobs.run(config, str(tmp_path / "w"))


def test_top_k_real_marks_the_results_before_the_left_out_items():
  """TopK.real: True for each result, False from the first item the protocol left out
  (score -inf) on, by the score the lists are ranked by."""
  inf = np.inf
  visual = np.array([[0.9, 0.8, 0.7], [0.5, 0.2, -inf]], np.float32)
  joint = np.array([[0.4, -inf, -inf], [0.3, 0.1, -inf]], np.float32)
  index = np.array([[0, 1, 2], [2, 0, 1]])
  np.testing.assert_array_equal(
      protocol.TopK(index, visual, None, joint, "joint").real,
      [[True, False, False], [True, True, False]])
  np.testing.assert_array_equal(
      protocol.TopK(index, visual, None, None, "visual").real,
      [[True, True, True], [True, True, False]])
