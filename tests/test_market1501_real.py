"""The real Market-1501 zip through the builder, the name grammar and the ST fit.

Runs when the official zip lies at ``../shared/market1501/`` beside the repository
(or in the folder ``$JREID_MARKET1501``), and is skipped, saying so, in a clone
without it. Nothing of the dataset is written outside pytest's temporary folders.

The oracle is the zip's own listing, read with the reference code's rules
(``prepare.py`` and ``test_st_market.py``: the id is the name's first field, "-1"
junk; the camera the digit after "c"; the global frame the sum of the earlier
sequences' maxima plus the local frame, from ``prepare.py``'s ``dict_cam_seq_max``),
written out again here, not jreid's parser.
"""

import collections
import os
import time
import zipfile

import numpy as np
import pytest

from jreid import names
from jreid import st as st_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANUAL_DIR = os.environ.get("JREID_MARKET1501",
                            os.path.join(os.path.dirname(ROOT), "shared", "market1501"))
ZIP = os.path.join(MANUAL_DIR, "Market-1501-v15.09.15.zip")

pytestmark = pytest.mark.skipif(
    not os.path.isfile(ZIP),
    reason=f"the real Market-1501 zip is not at {ZIP} (set $JREID_MARKET1501 to the folder "
           f"holding Market-1501-v15.09.15.zip)")

FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

# prepare.py's dict_cam_seq_max (camera * 10 + sequence -> the sequence's last frame).
CAM_SEQ_MAX = {
    11: 72681, 12: 74546, 13: 74881, 14: 74661, 15: 74891, 16: 54346,
    21: 163691, 22: 164677, 23: 98102,
    31: 161708, 32: 161769, 33: 104469,
    41: 72107, 42: 72373, 43: 74810, 44: 74541, 45: 74910, 46: 50616,
    51: 161095, 52: 161724, 53: 103487,
    61: 87551, 62: 131268, 63: 95817, 64: 30952}


def _reference_row(name):
  """(id, 1-based camera, global frame) as the reference code reads a Market name."""
  fields = name.split("_")
  pid = -1 if name[0:2] == "-1" else int(name[0:4])
  cam, seq = int(fields[1][1]), int(fields[1][3])
  frame = sum(CAM_SEQ_MAX[cam * 10 + s] for s in range(1, seq)) + int(fields[2])
  return pid, cam, frame


@pytest.fixture(scope="module")
def zip_listing():
  """{split: sorted image names} from the zip's own directory."""
  out = collections.defaultdict(list)
  with zipfile.ZipFile(ZIP) as z:
    for entry in z.namelist():
      parts = entry.split("/")
      if len(parts) == 3 and parts[2].lower().endswith(".jpg"):
        for split, folder in FOLDERS.items():
          if parts[1] == folder:
            out[split].append(parts[2])
  return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(builder, seconds): the zip prepared by the market1501 builder, timed."""
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top  (TensorFlow)
  data_dir = str(tmp_path_factory.mktemp("tfds_real"))
  start = time.time()
  builder = market1501.prepare(data_dir, MANUAL_DIR, market1501.source_digest(MANUAL_DIR))
  seconds = time.time() - start
  print(f"\nreal Market-1501 prepared in {seconds:.1f} s")
  return builder, seconds


def test_zip_holds_the_official_counts(zip_listing):
  assert {k: len(v) for k, v in zip_listing.items()} == {
      "train": 12936, "query": 3368, "gallery": 19732}
  doubled = [n for v in zip_listing.values() for n in v if n.endswith(".jpg.jpg")]
  assert len(doubled) == 24  # identity 1488 (6 query, 13 gallery), 3 distractors, 2 junk


def test_every_real_name_fits_the_grammar(zip_listing):
  for split, listed in zip_listing.items():
    r = names.parse_names(listed, grammar="market")
    expected = np.asarray([_reference_row(n) for n in listed])
    np.testing.assert_array_equal(r.person_ids, expected[:, 0], err_msg=split)
    np.testing.assert_array_equal(r.cameras + 1, expected[:, 1], err_msg=split)
    np.testing.assert_array_equal(r.times, expected[:, 2], err_msg=split)


def test_builder_prepares_the_official_splits(prepared, zip_listing):
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top
  builder, _ = prepared
  counts = {s: builder.info.splits[s].num_examples for s in FOLDERS}
  assert counts == {"train": 12936, "query": 3368, "gallery": 19732}
  rows = {}
  for split in FOLDERS:
    r = market1501.split_records(builder, split)
    order = np.argsort(r.names)
    assert r.names[order].tolist() == zip_listing[split]
    expected = np.asarray([_reference_row(n) for n in zip_listing[split]])
    np.testing.assert_array_equal(r.person_ids[order], expected[:, 0], err_msg=split)
    np.testing.assert_array_equal(r.cameras[order] + 1, expected[:, 1], err_msg=split)
    np.testing.assert_array_equal(r.times[order], expected[:, 2], err_msg=split)
    rows[split] = r
  train, query, gallery = rows["train"], rows["query"], rows["gallery"]
  # The official protocol's counts.
  assert len(np.unique(train.person_ids)) == 751 and (train.person_ids > 0).all()
  assert len(np.unique(query.person_ids)) == 750 and (query.person_ids > 0).all()
  labelled = gallery.person_ids[gallery.person_ids > 0]
  assert len(np.unique(labelled)) == 750
  assert set(np.unique(labelled)) == set(np.unique(query.person_ids))
  assert not set(np.unique(train.person_ids)) & set(np.unique(query.person_ids))
  assert int((gallery.person_ids == -1).sum()) == 3819  # junk
  assert int((gallery.person_ids == 0).sum()) == 2798   # distractors
  for r in rows.values():
    assert sorted(np.unique(r.cameras + 1).tolist()) == [1, 2, 3, 4, 5, 6]


def test_st_model_from_the_folder_equals_the_builders(prepared, tmp_path):
  """The features-file job reads training names from a folder; the main job from the
  prepared split. On the real names both give one ST model."""
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top
  builder, _ = prepared
  with zipfile.ZipFile(ZIP) as z:
    # Only the names are read: empty files stand in for the images.
    folder = tmp_path / "bounding_box_train"
    folder.mkdir()
    for entry in z.namelist():
      if "/bounding_box_train/" in entry and entry.endswith(".jpg"):
        (folder / os.path.basename(entry)).write_bytes(b"")
  listing = names.list_image_folder(str(folder))
  from_builder = market1501.split_records(builder, "train")
  params = st_lib.STParams()
  a = st_lib.fit(listing.records.person_ids, listing.records.cameras, listing.records.times,
                 6, params)
  b = st_lib.fit(from_builder.person_ids, from_builder.cameras, from_builder.times, 6, params)
  np.testing.assert_array_equal(a.table, b.table)
  np.testing.assert_array_equal(a.pair_counts, b.pair_counts)
  assert a.num_identities == 751
  # Every pair of distinct cameras has transits; the same camera none (the reference's
  # table has a zero diagonal).
  off_diagonal = ~np.eye(6, dtype=bool)
  assert a.pair_counts.shape == (6, 6) and (a.pair_counts[off_diagonal] > 0).all()
  assert (np.diag(a.pair_counts) == 0).all()
