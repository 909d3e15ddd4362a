import os

import numpy as np
import pytest

from jreid import st
from jreid import tracks
from jreid.data import synthetic


def write(tmp_path, text, name="tracks.csv"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def touch(tmp_path, *names):
  for n in names:
    p = tmp_path / n
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")


def test_seconds_relative_and_absolute_images_and_camera_names(tmp_path):
  touch(tmp_path, "img/a.jpg", "img/b.jpg")
  absolute = str(tmp_path / "img" / "b.jpg")
  path = write(tmp_path, "person_id,camera,time,image,extra\n"
                         f"3,north gate,100.5,img/a.jpg,x\n"
                         f"4,cam B,99.25,{absolute},y\n")
  t = tracks.read_table(path)
  assert t.time_form == "seconds"
  assert t.images.tolist() == [str(tmp_path / "img" / "a.jpg"), absolute]
  assert t.cameras.tolist() == ["north gate", "cam B"]
  assert t.lines.tolist() == [2, 3]
  names = tracks.camera_names(t)
  assert names == ("cam B", "north gate")
  base = tracks.time_base(t)
  assert base.origin_seconds == 99.25
  r = tracks.to_records(t, names, base)
  assert r.cameras.tolist() == [1, 0]
  assert r.times.tolist() == [1250, 0]          # milliseconds since the earliest row
  assert r.person_ids.tolist() == [3, 4]
  assert base.format(1250) == 100.5


def test_iso_timestamps_with_and_without_zone(tmp_path):
  path = write(tmp_path, "camera,time\n"
                         "c1,2024-05-01T09:00:00Z\n"
                         "c2,2024-05-01T09:00:12.480\n"       # no zone: UTC
                         "c3,2024-05-01T11:00:00+02:00\n")    # = 09:00:00 UTC
  t = tracks.read_table(path, check_images=False)
  assert t.time_form == "iso" and t.images is None and not t.labelled
  base = tracks.time_base(t)
  r = tracks.to_records(t, tracks.camera_names(t), base)
  assert r.times.tolist() == [0, 12480, 0]
  assert r.person_ids.tolist() == [-1, -1, -1]   # unlabelled: never a match
  assert base.format(12480) == "2024-05-01T09:00:12.480+00:00"
  assert r.names.tolist() == [f"{path}:2", f"{path}:3", f"{path}:4"]


def test_frames_with_per_camera_fps(tmp_path):
  path = write(tmp_path, "camera,time,split\nA,250,train\nB,300,query\nA,0,gallery\n")
  t = tracks.read_table(path, fps={"A": 25, "B": 30}, check_images=False)
  assert t.time_form == "frames"
  np.testing.assert_array_equal(t.seconds, [10.0, 10.0, 0.0])
  assert t.split("query").cameras.tolist() == ["B"]
  t1 = tracks.read_table(path, fps=50, check_images=False)
  np.testing.assert_array_equal(t1.seconds, [5.0, 6.0, 0.0])
  with pytest.raises(tracks.TracksError, match=r"line 3, column 'camera'.*'B' has no frame rate"):
    tracks.read_table(path, fps={"A": 25}, check_images=False)


@pytest.mark.parametrize("text,kwargs,message", [
    ("camera,image\nc1,a.jpg\n", {}, r"missing column\(s\) \['time'\]"),
    ("camera,time\nc1,1\n", dict(require_labels=True, check_images=False),
     r"missing column\(s\) \['person_id'\]"),
    ("camera,time\n", dict(check_images=False), r"empty table \(a header but no rows\)"),
    ("", dict(check_images=False), r"empty table"),
    ("camera,time\nc1,1.5\nc2,12:30\n", dict(check_images=False),
     r"line 3, column 'time': '12:30' is neither seconds .* nor an ISO-8601"),
    ("camera,time\nc1,nan\n", dict(check_images=False), r"line 2, column 'time'.*finite"),
    ("camera,time\nc1,1.5\nc2,2024-01-01T00:00:00\n", dict(check_images=False),
     r"line 3, column 'time'.*written as iso but line 2 as seconds"),
    ("camera,time,person_id\nc1,1,7\nc1,2,x\n", dict(check_images=False),
     r"line 3, column 'person_id': 'x' is not an integer"),
    ("camera,time,person_id\nc1,1,-3\n", dict(check_images=False),
     r"line 2, column 'person_id': -3; expected an identity from 1 to 2147483647, or -1 "
     r"\(junk\)"),
    ("camera,time,person_id\nc1,1,99999999999999999999\n", dict(check_images=False),
     r"line 2, column 'person_id': 99999999999999999999; expected an identity from 1 to "
     r"2147483647"),
    ("camera,time\nc1,1\nc" + "x" * 200_000 + ",2\n", dict(check_images=False),
     r"line 3: not a CSV row \(field larger than field limit"),
    ("camera,time\nc1,1\nc\x002,2\n", dict(check_images=False),
     r"line 3, column 'camera': 'c\\x002' holds control characters"),
    ("camera,time,split\nc1,1,test\n", dict(check_images=False),
     r"line 2, column 'split': 'test'; expected one of train, query, gallery"),
    ("camera,time\n,1\n", dict(check_images=False), r"line 2, column 'camera': empty"),
    ("camera,time\nc1,1,9\n", dict(check_images=False), r"line 2 has 3 fields, the header has 2"),
    ("camera,time\nc1,1\nc2,2\nc1,1\nc2,2\nc1,1\n", dict(check_images=False),
     r"3 duplicate row\(s\), e\.g\. line 4 repeats line 2"),
])
def test_bad_tables_name_line_column_and_expectation(tmp_path, text, kwargs, message):
  path = write(tmp_path, text)
  with pytest.raises(tracks.TracksError, match=message):
    tracks.read_table(path, **kwargs)


def test_missing_and_repeated_images(tmp_path):
  touch(tmp_path, "a.jpg")
  path = write(tmp_path, "image,camera,time\na.jpg,c1,1\nb.jpg,c1,2\nc.jpg,c2,3\n")
  with pytest.raises(tracks.TracksError,
                     match=r"line 3, column 'image': '.*b\.jpg' does not exist \(2 of 3 images"):
    tracks.read_table(path)
  assert len(tracks.read_table(path, check_images=False)) == 3   # features from a file
  path = write(tmp_path, "image,camera,time\na.jpg,c1,1\na.jpg,c2,5\n")
  with pytest.raises(tracks.TracksError, match=r"line 3, column 'image'.*also on line 2"):
    tracks.read_table(path)
  with pytest.raises(tracks.TracksError, match="does not exist"):
    tracks.read_table(str(tmp_path / "nope.csv"))


def test_span_beyond_int32_milliseconds_is_an_error(tmp_path):
  path = write(tmp_path, "camera,time\nc1,0\nc2,2000000\nc2,3000000\n")   # 23.1 and 34.7 days
  t = tracks.read_table(path, check_images=False)
  with pytest.raises(tracks.TracksError,
                     match=r"line 4, column 'time'.*at most 24\.86 days \(1 rows outside\)"):
    tracks.to_records(t, tracks.camera_names(t), tracks.time_base(t))


def test_tables_share_one_time_base_and_forms_must_agree(tmp_path):
  a = tracks.read_table(write(tmp_path, "camera,time\nc1,50\n", "a.csv"), check_images=False)
  b = tracks.read_table(write(tmp_path, "camera,time\nc2,20\n", "b.csv"), check_images=False)
  base = tracks.time_base(a, b)
  assert tracks.to_records(a, ("c1", "c2"), base).times.tolist() == [30000]
  iso = tracks.read_table(write(tmp_path, "camera,time\nc1,2024-01-01T00:00:00\n", "c.csv"),
                          check_images=False)
  with pytest.raises(tracks.TracksError, match="mix ISO-8601 timestamps and seconds"):
    tracks.time_base(a, iso)


def test_known_camera_names_come_first_and_unseen_are_counted(tmp_path):
  t = tracks.read_table(write(tmp_path, "camera,time\nz,1\nb,2\nnew,3\nnew,4\n"),
                        check_images=False)
  names = tracks.camera_names(t, known=("z", "a", "b"))
  assert names == ("z", "a", "b", "new")
  r = tracks.to_records(t, names, tracks.time_base(t))
  assert r.cameras.tolist() == [0, 2, 3, 3]
  assert tracks.unseen_cameras(r, names, 3) == {"new": 2}
  with pytest.raises(tracks.TracksError, match=r"cameras \['new'\] are not among"):
    tracks.to_records(t, ("z", "b"), tracks.time_base(t))


def test_bin_width_in_ticks():
  assert tracks.bin_width_ticks(4.0) == 4000
  assert tracks.bin_width_ticks(0.04) == 40
  with pytest.raises(ValueError, match="bin_seconds"):
    tracks.bin_width_ticks(0.0005)


def test_synthetic_world_table_fits_the_same_st_model_as_its_names(tmp_path):
  params = synthetic.WorldParams(num_train_ids=30, num_test_ids=6, num_cameras=4,
                                 image_height=16, image_width=8, num_junk=2,
                                 num_distractors=2, group_size=3, seed=5)
  manifest = synthetic.generate(str(tmp_path), params)
  t = tracks.read_table(str(tmp_path / synthetic.TRACKS_FILE), require_labels=True)
  assert len(t) == len(manifest.filenames)
  assert sorted(set(t.cameras.tolist())) == ["cam1", "cam2", "cam3", "cam4"]
  np.testing.assert_array_equal(np.round(t.seconds * 25).astype(np.int64), manifest.time)
  train = t.split("train")
  names = tracks.camera_names(t)
  r = tracks.to_records(train, names, tracks.time_base(t))
  from_table = st.fit(r.person_ids, r.cameras, r.times, len(names),
                      st.STParams(bin_width=tracks.bin_width_ticks(4.0), num_bins=5000),
                      camera_names=names, ticks_per_second=tracks.TICKS_PER_SECOND)
  mask = np.asarray(manifest.split) == "train"
  from_names = st.fit(manifest.person_id[mask], manifest.camera[mask] - 1,
                      manifest.time[mask], 4)                 # frames, bins of 100 frames
  np.testing.assert_array_equal(from_table.pair_counts, from_names.pair_counts)
  np.testing.assert_allclose(from_table.table, from_names.table, rtol=0, atol=1e-12)
  assert from_table.bin_seconds == 4.0
  # An older world folder gains its table on reuse.
  os.remove(tmp_path / synthetic.TRACKS_FILE)
  synthetic.write_tracks_table(str(tmp_path), synthetic.read_manifest(str(tmp_path)))
  assert len(tracks.read_table(str(tmp_path / synthetic.TRACKS_FILE))) == len(t)


def test_parse_fps():
  assert tracks.parse_fps("") is None
  assert tracks.parse_fps("25") == 25.0
  assert tracks.parse_fps("cam1=25, north gate=12.5") == {"cam1": 25.0, "north gate": 12.5}
  with pytest.raises(ValueError, match=r"tracks.fps: 'cam2' in 'cam1=25,cam2'; expected"):
    tracks.parse_fps("cam1=25,cam2")


def test_reading_a_long_table_shows_progress(tmp_path, monkeypatch, caplog):
  """Reading and checking a table are long phases at a million rows: they log progress
  (here with progress lines every 0 s, at every 4096 lines)."""
  import functools  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  from jreid import progress  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tracks.progress, "Progress",
                      functools.partial(progress.Progress, every_s=0.0))
  caplog.set_level(logging.INFO)
  rows = "".join(f"c{i % 3},{i}.5,{i % 50 + 1}\n" for i in range(10_000))
  path = write(tmp_path, "camera,time,person_id\n" + rows)
  table = tracks.read_table(path, check_images=False)
  assert len(table) == 10_000
  lines = [r.getMessage() for r in caplog.records if ": reading:" in r.getMessage()]
  assert any("4096/10001 lines" in l for l in lines) and any("ETA" in l for l in lines)
