"""The market1501 builder's handling of bad and changed manual data."""

import logging
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from jreid import errors
from jreid.data import market1501
from jreid.data import synthetic

from conftest import TINY_WORLD


def _rewrite_zip(src, dst, change):
  """Copies zip ``src`` to ``dst`` with ``change(name, data) -> data or None`` applied."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
    for info in zin.infolist():
      data = change(info.filename, zin.read(info.filename))
      if data is not None:
        zout.writestr(info.filename, data)


def test_a_replaced_zip_is_noticed(world, tmp_path):
  good = os.path.join(world[0], market1501.ZIP_NAME)
  manual = tmp_path / "manual"
  manual.mkdir()
  zip_path = manual / market1501.ZIP_NAME
  victim = []

  def corrupt(name, data):
    if name.endswith(".jpg") and "bounding_box_train" in name and not victim:
      victim.append(os.path.basename(name))
      return data[:len(data) // 3]
    return data
  _rewrite_zip(good, zip_path, corrupt)
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(Exception, match=victim[0]):
    market1501.prepare(data_dir, str(manual), market1501.source_digest(str(manual)))
  # The user replaces the zip with a good one: it is extracted and prepared afresh.
  shutil.copyfile(good, zip_path)
  os.utime(zip_path, (1, 1))  # whatever the clock: the size or time differs
  builder = market1501.prepare(data_dir, str(manual), market1501.source_digest(str(manual)))
  assert builder.info.splits["train"].num_examples == sum(
      s == "train" for s in world[1].split)
  # Unchanged source: reused as it is.
  again = market1501.prepare(data_dir, str(manual), market1501.source_digest(str(manual)))
  assert again.info.splits["train"].num_examples == builder.info.splits["train"].num_examples


def test_an_empty_split_in_the_zip_is_named(world, tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  _rewrite_zip(os.path.join(world[0], market1501.ZIP_NAME), manual / market1501.ZIP_NAME,
               lambda name, data: None if "/query/" in name else data)
  with pytest.raises(market1501.ManualDataMissingError,
                     match=r"the split folders \['query'\] are empty or missing"):
    market1501.prepare(str(tmp_path / "tfds"), str(manual),
                       market1501.source_digest(str(manual)))


def test_rgba_png_is_converted_and_junk_left_out_of_train(tmp_path, caplog):
  out = str(tmp_path / "world")
  params = synthetic.WorldParams(**{**TINY_WORLD.__dict__, "seed": 11})
  manifest = synthetic.generate(out, params)
  train_dir = os.path.join(out, synthetic.ROOT_NAME, "bounding_box_train")
  first = sorted(os.listdir(train_dir))[0]
  rgba = np.zeros((64, 32, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 255
  os.remove(os.path.join(train_dir, first))
  png = first[:-4] + ".png"
  Image.fromarray(rgba, "RGBA").save(os.path.join(train_dir, png))
  # Junk and a distractor in the training folder (as in bounding_box_test).
  gallery_dir = os.path.join(out, synthetic.ROOT_NAME, "bounding_box_test")
  extra = [n for n in sorted(os.listdir(gallery_dir)) if n.startswith(("-1_", "0000_"))][:2]
  for n in extra:
    shutil.copy(os.path.join(gallery_dir, n), train_dir)
  with caplog.at_level(logging.WARNING):
    builder = market1501.prepare(str(tmp_path / "tfds"), out, market1501.source_digest(out))
  n_train = sum(s == "train" for s in manifest.split)
  assert builder.info.splits["train"].num_examples == n_train  # the 2 extra left out
  assert any("looks like a test split" in r.getMessage() for r in caplog.records)
  records = market1501.split_records(builder, "train")
  assert (records.person_ids > 0).all()
  index = int(np.nonzero(records.names == png)[0][0])
  image = market1501.decoded_images(builder, "train", [index])[index]
  assert image.shape == (64, 32, 3)
  assert abs(int(image[..., 0].mean()) - 200) <= 2  # RGB kept, alpha dropped


def test_unreadable_image_names_the_file(tmp_path):
  bad = tmp_path / "0001_c1s1_000100_01.jpg"
  bad.write_bytes(b"\xff\xd8 not really a jpeg")
  with pytest.raises(errors.InputError, match="0001_c1s1_000100_01.jpg' is not a readable image"):
    market1501.read_image(str(bad))
