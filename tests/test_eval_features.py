"""The evaluate-from-features job, end to end (CLI) and its input errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

import numpy_reference
from experiments import eval_features
from jreid import errors
from jreid import evaluate
from jreid import feature_files
from jreid import jobs
from jreid import names
from jreid import records
from jreid import st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_case(tmp_path, seed=0, n_ids=30, dims=12):
  """Ids walk cameras 1 -> 2 -> 3 with ~2000-frame transits; appearance is noisy."""
  rng = np.random.default_rng(seed)
  train_dir = tmp_path / "bounding_box_train"
  train_dir.mkdir()
  def visits(pid, start):
    return [(cam, int(start + (cam - 1) * 2000 + rng.integers(-300, 300))) for cam in (1, 2, 3)]
  for pid in range(1, n_ids + 1):
    for cam, t in visits(pid, rng.integers(1000, 400_000)):
      (train_dir / names.market_name(pid, cam, t)).write_bytes(b"")
  (train_dir / "Thumbs.db").write_bytes(b"")
  centres = rng.normal(size=(n_ids + 1, dims))
  q, g = {k: [] for k in "fict"}, {k: [] for k in "fict"}
  for pid in range(1, n_ids + 1):
    vs = visits(pid, rng.integers(1000, 400_000))
    for j, (cam, t) in enumerate(vs):
      side = q if j == 0 else g
      side["f"].append(centres[pid] + 1.5 * rng.normal(size=dims))
      side["i"].append(pid), side["c"].append(cam), side["t"].append(t)
  for pid, cam in ((0, 1), (0, 2), (-1, 3)):  # a distractor and junk
    g["f"].append(rng.normal(size=dims)), g["i"].append(pid), g["c"].append(cam)
    g["t"].append(5000)
  arrays = {}
  for side, d in (("query", q), ("gallery", g)):
    arrays.update({f"{side}_f": np.asarray(d["f"], np.float32),
                   f"{side}_label": np.asarray(d["i"]), f"{side}_cam": np.asarray(d["c"]),
                   f"{side}_frames": np.asarray(d["t"])})
  return train_dir, arrays


def _config(features, train_dir, **overrides):
  config = eval_features.get_config()
  config.features, config.train_dir = str(features), str(train_dir)
  config.update(overrides)
  return config


def test_cli_end_to_end_matches_reference(tmp_path):
  train_dir, arrays = make_case(tmp_path)
  # A .mat as the reference writes it: labels, cameras and frames as 1 x N.
  mat = {k: (v[None, :] if v.ndim == 1 else v) for k, v in arrays.items()}
  features = tmp_path / "pytorch_result.mat"
  scipy.io.savemat(str(features), mat)
  workdir = tmp_path / "work"
  proc = subprocess.run(
      [sys.executable, "main.py", f"--workdir={workdir}", "--config=experiments/eval_features.py",
       f"--config.features={features}", f"--config.train_dir={train_dir}",
       "--config.st.num_bins=300"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "rank-1" in proc.stdout and "st" in proc.stdout
  results = json.loads((workdir / "results.json").read_text())
  for f in ("results.json", "cmc.json", "cmc.png", "st_model.npz", "st_distributions.png"):
    assert (workdir / f).stat().st_size > 0, f

  listing = names.list_image_folder(str(train_dir))
  table = numpy_reference.fit_st(listing.records.person_ids, listing.records.cameras,
                                 listing.records.times, 3, num_bins=300)
  qf = numpy_reference.normalise(arrays["query_f"])
  gf = numpy_reference.normalise(arrays["gallery_f"])
  args = [arrays[f"{s}_{k}"] for s in ("query", "gallery") for k in ("label", "cam", "frames")]
  q_args, g_args = args[:3], args[3:]
  for kind, tab in (("visual", None), ("st", table)):
    ref = numpy_reference.evaluate(qf, *q_args, gf, *g_args, table=tab)
    for key in ("rank1", "rank5", "rank10", "mAP"):
      assert 0 <= results[kind][key] <= 1
      assert results[kind][key] == pytest.approx(ref[key], abs=1e-6), (kind, key)
  # The world moves people 1 -> 2 -> 3 in ~2000 frames: the prior must help.
  assert results["st"]["mAP"] > results["visual"]["mAP"] + 0.1


def test_npz_and_reuse_of_st_model(tmp_path):
  train_dir, arrays = make_case(tmp_path, seed=1)
  features = tmp_path / "f.npz"
  np.savez(features, **arrays)
  workdir = str(tmp_path / "w")
  first = jobs.run(_config(features, train_dir), workdir)
  assert set(first) == {"visual", "st", "visual_rerank", "st_rerank"}
  mtime = os.path.getmtime(os.path.join(workdir, "st_model.npz"))
  second = jobs.run(_config(features, train_dir), workdir)
  assert first == second
  assert os.path.getmtime(os.path.join(workdir, "st_model.npz")) == mtime
  config = _config(features, train_dir)
  config.rerank.enabled = False
  without = jobs.run(config, workdir)
  assert set(without) == {"visual", "st"} and without["st"] == first["st"]


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.pop("gallery_cam"), r"lacks the keys \['gallery_cam'\]"),
    (lambda a: a.__setitem__("query_label", a["query_label"][:-1]), "query_label has 29 entries"),
    (lambda a: a["gallery_f"].__setitem__((3, 2), np.nan), "non-finite values"),
    (lambda a: a.__setitem__("query_cam", a["query_cam"] - 1), "1-based"),
    (lambda a: a.__setitem__("query_label", a["query_label"].astype(str)),
     r"query_label holds <U\d+ values .* expected whole numbers"),
    (lambda a: a.__setitem__("query_f", a["query_f"][0]), r"query_f must be a non-empty "
     r"\[N, D\] matrix \(one row per image\), got shape \(12,\)"),
    (lambda a: a["gallery_f"].__setitem__(slice(4, 6), 0.0),
     r"gallery_f has all zeros in 2 rows \(first rows \[4, 5\]\)"),
    (lambda a: a["query_f"].__setitem__(7, 3e38),
     r"query_f has values so large that their norm overflows float32 in 1 rows \(first rows "
     r"\[7\]\)"),
])
def test_bad_features_files(tmp_path, mutate, message):
  train_dir, arrays = make_case(tmp_path)
  mutate(arrays)
  features = tmp_path / "bad.npz"
  np.savez(features, **arrays)
  with pytest.raises(ValueError, match=message) as e:
    jobs.run(_config(features, train_dir), str(tmp_path / "w"))
  assert "bad.npz" in str(e.value)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:len(b) // 2], r"is not a readable \.npz \(zip\) file"),
    (lambda b: b"not a zip at all" * 10, r"is not a readable \.npz \(zip\) file"),
])
def test_damaged_npz_names_the_file(tmp_path, damage, message):
  train_dir, arrays = make_case(tmp_path)
  features = tmp_path / "damaged.npz"
  np.savez(features, **arrays)
  features.write_bytes(damage(features.read_bytes()))
  with pytest.raises(errors.InputError, match=message) as e:
    jobs.run(_config(features, train_dir), str(tmp_path / "w"))
  assert "damaged.npz" in str(e.value)


def test_truncated_mat_and_a_folder_name_the_path(tmp_path):
  train_dir, arrays = make_case(tmp_path)
  mat = tmp_path / "cut.mat"
  scipy.io.savemat(str(mat), arrays)
  mat.write_bytes(mat.read_bytes()[:3000])
  with pytest.raises(errors.InputError, match=r"cut.mat' is not a readable \.mat file"):
    jobs.run(_config(mat, train_dir), str(tmp_path / "w"))
  folder = tmp_path / "folder.npz"
  folder.mkdir()
  with pytest.raises(errors.InputError, match=r"folder.npz' is a folder"):
    jobs.run(_config(folder, train_dir), str(tmp_path / "w"))


def test_no_query_with_a_true_match_is_an_error(tmp_path):
  train_dir, arrays = make_case(tmp_path)
  arrays["gallery_label"] = np.where(arrays["gallery_label"] > 0, -1, arrays["gallery_label"])
  features = tmp_path / "nomatch.npz"
  np.savez(features, **arrays)
  with pytest.raises(errors.InputError, match="no query has a true match in the gallery"):
    jobs.run(_config(features, train_dir), str(tmp_path / "w"))
  assert not (tmp_path / "w" / "results.json").exists()


def test_times_beyond_the_prior_and_unseen_cameras_warn_with_counts(tmp_path):
  train_dir, arrays = make_case(tmp_path)
  query, gallery, _ = feature_files.load_features(_save(tmp_path, arrays))
  listing = names.list_image_folder(str(train_dir))
  model = st.fit(listing.records.person_ids, listing.records.cameras, listing.records.times,
                 4, st.STParams(num_bins=300))
  logged = []
  log = lambda fmt, *a: logged.append(fmt % a)
  far = gallery.select(np.arange(len(gallery)))
  far = records.Records(far.person_ids, far.cameras, far.times + 10**7, far.features)
  counts = evaluate.check_inputs(query, far, model, log)
  assert counts["pairs_beyond_last_bin"] == len(query) * len(gallery)
  assert any("(100.00%)" in m and "'st' ranks exactly like 'visual'" in m for m in logged)
  unseen = records.Records(query.person_ids, np.full(len(query), 3), query.times,
                           query.features)
  logged.clear()
  counts = evaluate.check_inputs(unseen, gallery, model, log)
  assert counts["queries_from_unseen_cameras"] == len(query)
  assert any(f"{len(query)} queries come from cameras [4]" in m for m in logged)


def _save(tmp_path, arrays):
  path = tmp_path / "saved.npz"
  np.savez(path, **arrays)
  return str(path)


def test_empty_train_folder_and_missing_file(tmp_path):
  _, arrays = make_case(tmp_path)
  features = tmp_path / "f.npz"
  np.savez(features, **arrays)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="holds no images"):
    jobs.run(_config(features, empty), str(tmp_path / "w"))
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    jobs.run(_config(tmp_path / "nope.npz", empty), str(tmp_path / "w"))


def test_a_workdir_holds_the_products_of_one_job(tmp_path):
  """A search (or a training job) in the features job's workdir would replace its
  st_model.npz and stamps, which the features job would then reuse: it is refused, and
  nothing in the workdir changes."""
  from experiments import search as search_config  # pylint: disable=g-import-not-at-top
  from experiments import tiny  # pylint: disable=g-import-not-at-top
  train_dir, arrays = make_case(tmp_path, seed=2)
  features = tmp_path / "f.npz"
  np.savez(features, **arrays)
  workdir = tmp_path / "w"
  first = jobs.run(_config(features, train_dir, compilation_cache_dir=""), str(workdir))
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  search = search_config.get_config()
  search.tracks.train = search.tracks.query = str(tmp_path / "tracks.csv")
  search.features, search.compilation_cache_dir = str(features), ""
  with pytest.raises(errors.InputError, match=r"holds the products of the evaluate_features "
                     r"job .*; the search job would replace or reuse them: use another workdir"):
    jobs.run(search, str(workdir))
  training = tiny.get_config()
  training.compilation_cache_dir = ""
  with pytest.raises(errors.InputError, match="the train_and_evaluate job would replace"):
    jobs.run(training, str(workdir))
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
  assert jobs.run(_config(features, train_dir, compilation_cache_dir=""), str(workdir)) == first


def test_products_without_a_record_of_their_job_are_not_taken_over(tmp_path):
  train_dir, arrays = make_case(tmp_path, seed=2)
  features = tmp_path / "f.npz"
  np.savez(features, **arrays)
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "results.json").write_text("{}")
  with pytest.raises(errors.InputError, match=r"holds results.json with no record of the "
                     r"job that wrote them"):
    jobs.run(_config(features, train_dir), str(workdir))
  assert (workdir / "results.json").read_text() == "{}"
