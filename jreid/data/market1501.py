"""TFDS builder ``market1501``: Market-1501 from a manual download (or the synthetic world).

  import jreid.data.market1501  # registers the builder
  builder = tfds.builder("market1501", data_dir=DATA_DIR)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=DIR))

Splits: ``train`` (bounding_box_train), ``query`` (query) and ``gallery``
(bounding_box_test). Every example: ``image`` (uint8 HxWx3, the source JPEG bytes),
``id`` (-1 junk, 0 distractor), ``camera`` (1-based), ``sequence``, ``frame``
(local), ``time`` (global, with the reference offsets) and ``filename``. Names are
parsed by ``jreid.names``, the same code as the evaluate-from-features path.
"""

from __future__ import annotations

import io
import os
import zipfile

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from jreid import files
from jreid import names as names_lib

ROOT_NAME = "Market-1501-v15.09.15"
ZIP_NAME = ROOT_NAME + ".zip"
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

_INSTRUCTIONS = f"""\
Download Market-1501 (the official `{ZIP_NAME}`, from the authors' page
https://zheng-lab-anu.github.io/Project/project_reid.html) and place either the zip
itself or its extracted folder `{ROOT_NAME}/` (holding bounding_box_train/,
bounding_box_test/ and query/) in the TFDS manual dir: `<data_dir>/downloads/manual/`,
or the folder given by `--config.manual_dir`.
"""


class ManualDataMissingError(FileNotFoundError):
  """The manual dir lacks Market-1501; the message carries the instructions."""


def find_root(manual_dir: str, extract=None) -> str:
  """The folder holding the three split folders, given the manual dir.

  Accepts the manual dir being that folder, holding it, or holding the zip (which
  ``extract(path) -> folder`` unpacks; default: next to the zip, once).
  """
  manual_dir = os.fspath(manual_dir)
  has_splits = lambda c: all(files.isdir(files.join(c, f)) for f in SPLIT_FOLDERS.values())
  for c in (manual_dir, files.join(manual_dir, ROOT_NAME)):
    if has_splits(c):
      return c
  zip_path = files.join(manual_dir, ZIP_NAME)
  if files.isfile(zip_path):
    if extract is None:
      extract = _extract_next_to
    extracted = os.fspath(extract(zip_path))
    for c in (extracted, files.join(extracted, ROOT_NAME)):
      if has_splits(c):
        return c
    raise ManualDataMissingError(f"{zip_path!r} does not hold {ROOT_NAME}/ with "
                                 f"{sorted(SPLIT_FOLDERS.values())}.\n{_INSTRUCTIONS}")
  found = files.listdir(manual_dir) if files.isdir(manual_dir) else None
  what = ("does not exist" if found is None else "is empty" if not found else
          f"holds neither {ZIP_NAME} nor {ROOT_NAME}/ (found {found[:5]})")
  raise ManualDataMissingError(f"The manual dir {manual_dir!r} {what}.\n{_INSTRUCTIONS}")


def _extract_next_to(zip_path: str) -> str:
  out = zip_path[:-len(".zip")] + "_extracted"
  if not os.path.isdir(out):
    with zipfile.ZipFile(zip_path) as z:
      z.extractall(out + ".tmp")
    os.replace(out + ".tmp", out)
  return out


def read_image(path: str) -> bytes:
  """The file's bytes, after decoding them whole; ValueError naming the file if it cannot."""
  data = files.read_bytes(path)
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      if im.mode not in ("RGB", "L"):
        raise ValueError(f"mode {im.mode}")
  except Exception as e:  # PIL raises many types for corrupt files.
    raise ValueError(f"{path!r} is not a readable RGB JPEG image ({e})") from e
  return data


def examples(folder: str):
  """Yields (key, example) for every image in ``folder``; reports skipped entries."""
  listing = names_lib.list_image_folder(folder, grammar="market")
  if listing.skipped:
    logging.warning("market1501: %s: skipped %d entries that are not images: %s", folder,
                    len(listing.skipped), ", ".join(listing.skipped[:5]))
  t = listing.table
  for i, name in enumerate(t.names):
    yield name, {
        "image": read_image(files.join(folder, name)), "id": int(t.person_id[i]), "camera": int(t.camera[i]),
        "sequence": int(t.sequence[i]), "frame": int(t.frame[i]), "time": int(t.time[i]),
        "filename": name,
    }


class Market1501(tfds.core.GeneratorBasedBuilder):
  """Market-1501 person re-identification (Zheng et al., ICCV 2015), manual download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Train/query/gallery with id, camera, sequence, frame, time."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "id": tfds.features.Scalar(dtype=np.int64),
            "camera": tfds.features.Scalar(dtype=np.int64),
            "sequence": tfds.features.Scalar(dtype=np.int64),
            "frame": tfds.features.Scalar(dtype=np.int64),
            "time": tfds.features.Scalar(dtype=np.int64),
            "filename": tfds.features.Text(),
        }),
        homepage="https://zheng-lab-anu.github.io/Project/project_reid.html",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS: manual dir missing or empty.
      raise ManualDataMissingError(f"{e}\n{_INSTRUCTIONS}") from e
    root = find_root(manual_dir, extract=dl_manager.extract)
    return {split: self._generate_examples(files.join(root, folder))
            for split, folder in SPLIT_FOLDERS.items()}

  def _generate_examples(self, folder: str):
    return examples(folder)


def prepare(data_dir: str, manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The prepared ``market1501`` builder (prepared now if ``data_dir`` lacks it).

  Args:
    data_dir: TFDS data dir (local path or gs://).
    manual_dir: where the zip or folder lies; default ``<data_dir>/downloads/manual``.
  """
  builder = Market1501(data_dir=data_dir)
  if not builder.is_prepared():  # pytype: disable=attribute-error
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)
  return builder
