import os

import pytest

from jreid import names


def test_market_offsets_match_reference_table():
  assert names.MARKET_SEQUENCE_OFFSETS[1] == (0, 72681, 147227, 222108, 296769, 371660)
  assert names.MARKET_SEQUENCE_OFFSETS[2] == (0, 163691, 328368)
  assert names.MARKET_SEQUENCE_OFFSETS[3] == (0, 161708, 323477)
  assert names.MARKET_SEQUENCE_OFFSETS[4] == (0, 72107, 144480, 219290, 293831, 368741)
  assert names.MARKET_SEQUENCE_OFFSETS[5] == (0, 161095, 322819)
  assert names.MARKET_SEQUENCE_OFFSETS[6] == (0, 87551, 218819, 314636)


@pytest.mark.parametrize("name, expected", [
    ("0002_c1s1_000451_03.jpg", (2, 1, 1, 451, 451, "market")),
    ("0002_c1s3_000451_03.jpg", (2, 1, 3, 451, 147227 + 451, "market")),
    ("-1_c3s2_001234_00.jpg", (-1, 3, 2, 1234, 161708 + 1234, "market")),
    ("0000_c6s4_002200_01.jpg", (0, 6, 4, 2200, 314636 + 2200, "market")),
    ("/data/bounding_box_train/1500_c5s3_065012_01.jpg", (1500, 5, 3, 65012, 322819 + 65012, "market")),
    ("0002_c1_f0000451_03.jpg", (2, 1, 1, 451, 451, "market_renamed")),
    ("0002_c1_f0147678_03.jpg", (2, 1, 3, 451, 147678, "market_renamed")),
    # The last frame of s1 (its maximum) stays in s1.
    ("0007_c2_f0163691_01.jpg", (7, 2, 1, 163691, 163691, "market_renamed")),
    ("0001_c2_f0046182.jpg", (1, 2, 1, 46182, 46182, "duke")),
    # The official zip names 24 query/gallery images with the extension twice.
    ("1488_c1s6_023021_00.jpg.jpg", (1488, 1, 6, 23021, 371660 + 23021, "market")),
    ("-1_c4s6_022316_11.JPG.jpg", (-1, 4, 6, 22316, 368741 + 22316, "market")),
    ("0002_c1_f0000451_03.png.png", (2, 1, 1, 451, 451, "market_renamed")),
    ("-1_c8_f0000001.jpg", (-1, 8, 1, 1, 1, "duke")),
])
def test_parse_name(name, expected):
  p = names.parse_name(name)
  assert (p.person_id, p.camera, p.sequence, p.frame, p.time, p.grammar) == expected


def test_market_name_is_the_inverse_of_parse_name():
  assert names.market_name(2, 1, 72681 + 451, 3) == "0002_c1s2_000451_03.jpg"
  assert names.market_name(-1, 6, 314636 + 7) == "-1_c6s4_000007_01.jpg"
  p = names.parse_name(names.market_name(1500, 5, 322819 + 65012, 2))
  assert (p.person_id, p.camera, p.sequence, p.frame, p.time) == (1500, 5, 3, 65012, 387831)


def test_renamed_round_trip_for_every_sequence():
  for cam, offsets in names.MARKET_SEQUENCE_OFFSETS.items():
    for seq, _ in enumerate(offsets, start=1):
      for frame in (1, 77, names.MARKET_SEQUENCE_MAX_FRAMES[cam][seq - 1]):
        t = names.market_global_time(cam, seq, frame)
        assert names.split_global_time(cam, t) == (seq, frame)


@pytest.mark.parametrize("name", [
    "0002_c1s1_000451.jpg", "abc.jpg", "0002_c1s1_000451_03.txt", "0002-c1s1-000451-03.jpg",
    "0002_c7s1_000451_03.jpg",  # Market has cameras 1..6
    "0002_c2s4_000451_03.jpg",  # camera 2 has sequences 1..3
    "Thumbs.db",
    # Only the same extension repeated once is read as one.
    "0002_c1s1_000451_03.png.jpg", "0002_c1s1_000451_03.jpg.jpg.jpg", "0002_c1s1_000451_03.jpg.txt",
])
def test_bad_names_raise_naming_the_file(name):
  with pytest.raises(names.BadNameError, match=name.replace(".", r"\.")):
    names.parse_name(name)


def test_grammar_can_be_insisted_on():
  with pytest.raises(names.BadNameError, match="DukeMTMC"):
    names.parse_name("0002_c1s1_000451_03.jpg", grammar="duke")


def test_parse_names_arrays():
  t = names.parse_names(["0002_c1s2_000010_01.jpg", "0003_c6s1_000020_02.jpg"])
  assert t.person_ids.tolist() == [2, 3]
  assert t.cameras.tolist() == [0, 5]  # records are 0-based: c1 -> 0, c6 -> 5
  assert t.times.tolist() == [72681 + 10, 20]
  assert t.names.tolist() == ["0002_c1s2_000010_01.jpg", "0003_c6s1_000020_02.jpg"]


def test_mixed_grammars_are_an_error():
  with pytest.raises(names.BadNameError, match=r"'0001_c2_f0046182.jpg' is a duke name but "
                     r"'0002_c1s2_000010_01.jpg' is a market name"):
    names.parse_names(["0002_c1s2_000010_01.jpg", "0001_c2_f0046182.jpg"])


def test_every_rejected_name_is_counted_and_the_first_named():
  good = ["0002_c1s2_000010_01.jpg"]
  bad = ["a.jpg", "0002_c9s1_000010_01.jpg", "b.jpg", "c.jpg"]
  with pytest.raises(names.BadNameError, match=r"^4 of 5 names do not fit the file-name grammar; "
                     r"the first 3: 'a\.jpg' does not fit.*'0002_c9s1_000010_01\.jpg': camera c9.*"
                     r"'b\.jpg' does not fit") as e:
    names.parse_names(good + bad)
  assert "c.jpg" not in str(e.value)


def test_training_folder_with_junk_warns_with_counts():
  logged = []
  r = names.parse_names(["-1_c1s1_000010_01.jpg", "0000_c2s1_000020_01.jpg",
                         "0000_c2s1_000030_01.jpg", "0005_c3s1_000040_01.jpg"])
  names.warn_if_test_split(r, "bounding_box_test", lambda *a: logged.append(a[0] % a[1:]))
  assert len(logged) == 1
  assert "1 junk (id -1) and 2 distractor (id 0) images of 4" in logged[0]
  assert "looks like a test split" in logged[0]
  names.warn_if_test_split(r.select(r.person_ids > 0), "train", logged.append)
  assert len(logged) == 1


def test_list_image_folder_reports_skipped(tmp_path):
  for n in ["0002_c1s1_000451_03.jpg", "0002_c2s1_000500_01.jpg", "Thumbs.db", "notes.txt"]:
    (tmp_path / n).write_bytes(b"")
  listing = names.list_image_folder(str(tmp_path))
  assert listing.records.names.tolist() == ["0002_c1s1_000451_03.jpg", "0002_c2s1_000500_01.jpg"]
  assert listing.skipped == ("Thumbs.db", "notes.txt")


def test_list_image_folder_reads_doubled_extensions(tmp_path):
  for n in ["1488_c1s6_023021_00.jpg.jpg", "1488_c2s3_065527_00.jpg"]:
    (tmp_path / n).write_bytes(b"")
  r = names.list_image_folder(str(tmp_path)).records
  assert r.names.tolist() == ["1488_c1s6_023021_00.jpg.jpg", "1488_c2s3_065527_00.jpg"]
  assert r.times.tolist() == [371660 + 23021, 328368 + 65527]


def test_list_image_folder_errors(tmp_path):
  with pytest.raises(ValueError, match="holds no images"):
    names.list_image_folder(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="missing"):
    names.list_image_folder(os.path.join(str(tmp_path), "missing"))
  (tmp_path / "bad_name.jpg").write_bytes(b"")
  with pytest.raises(names.BadNameError, match="bad_name.jpg"):
    names.list_image_folder(str(tmp_path))
