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
import sys
import time
import zipfile

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from jreid import errors
from jreid import files
from jreid import names as names_lib
from jreid.data import pipeline
from jreid.records import Records

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


def source_digest(manual_dir: str) -> str:
  """A digest of the manual source: the zip's size and modification time, or the
  names, sizes and times of the split folders' files. A replaced zip (or an edited
  folder) changes it, and the prepared dataset is then rebuilt."""
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha1()
  zip_path = files.join(manual_dir, ZIP_NAME)
  if files.isfile(zip_path):
    st = files.path(zip_path).stat()
    digest.update(f"zip {st.length} {int(st.mtime)}".encode())
    return digest.hexdigest()
  for c in (manual_dir, files.join(manual_dir, ROOT_NAME)):
    if all(files.isdir(files.join(c, f)) for f in SPLIT_FOLDERS.values()):
      for folder in sorted(SPLIT_FOLDERS.values()):
        for entry in os.scandir(files.join(c, folder)) if not files.is_remote(c) else ():
          st = entry.stat()
          digest.update(f"{folder}/{entry.name} {st.st_size} {st.st_mtime_ns}\n".encode())
        if files.is_remote(c):
          digest.update(" ".join(files.listdir(files.join(c, folder))).encode())
      return digest.hexdigest()
  return "missing"


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
    for c in (extracted, files.join(extracted, ROOT_NAME)):
      present = [f for f in SPLIT_FOLDERS.values() if files.isdir(files.join(c, f))]
      if present:
        absent = sorted(set(SPLIT_FOLDERS.values()) - set(present))
        raise ManualDataMissingError(
            f"{zip_path!r}: the split folders {absent} are empty or missing in {ROOT_NAME}/ "
            f"(found {sorted(present)}); expected images in each of "
            f"{sorted(SPLIT_FOLDERS.values())}")
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


def read_image(path: str) -> bytes | np.ndarray:
  """The file's JPEG bytes, or its pixels (uint8 [h, w, 3]) when it is not an RGB or
  grey JPEG (PNG, RGBA, palette: converted to RGB, TFDS then encodes it). Decoded
  whole first; errors.InputError naming the file if it cannot be."""
  data = files.read_bytes(path)
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      if im.format == "JPEG" and im.mode in ("RGB", "L"):
        return data
      return np.asarray(im.convert("RGB"))
  except Exception as e:  # PIL raises many types for corrupt files.
    raise errors.InputError(f"{path!r} is not a readable image ({e})") from e


def examples(folder: str, labelled_only: bool = False):
  """Yields (key, example) for every image in ``folder``; reports skipped entries.

  With ``labelled_only`` (the train split) junk (-1) and distractors (0) are left
  out, with a warning that counts them.
  """
  listing = names_lib.list_image_folder(folder, grammar="market")
  if listing.skipped:
    logging.warning("market1501: %s: skipped %d entries that are not images: %s", folder,
                    len(listing.skipped), ", ".join(listing.skipped[:5]))
  r = listing.records
  if labelled_only:
    names_lib.warn_if_test_split(r, folder, logging.warning)
  for i, name in enumerate(r.names):
    if labelled_only and r.person_ids[i] <= 0:
      continue
    parsed = names_lib.parse_name(name, grammar="market")
    yield name, {
        "image": read_image(files.join(folder, name)), "id": parsed.person_id,
        "camera": parsed.camera, "sequence": parsed.sequence, "frame": parsed.frame,
        "time": parsed.time, "filename": name,
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
    return examples(folder, labelled_only=folder.rstrip("/").endswith(SPLIT_FOLDERS["train"]))


def _discard_prepared(data_dir: str) -> None:
  """Removes the prepared dataset and TFDS's extraction of the manual zip."""
  for stale in (files.join(data_dir, "market1501"),):
    if files.exists(stale):
      files.path(stale).rmtree()
  extracted = files.join(data_dir, "downloads", "extracted")
  if files.isdir(extracted):
    for name in files.listdir(extracted):
      if ROOT_NAME in name:
        files.path(files.join(extracted, name)).rmtree()


def prepare(data_dir: str, manual_dir: str | None = None, source_digest: str | None = None
            ) -> tfds.core.DatasetBuilder:
  """The prepared ``market1501`` builder (prepared now if ``data_dir`` lacks it).

  Args:
    data_dir: TFDS data dir (local path or gs://).
    manual_dir: where the zip or folder lies; default ``<data_dir>/downloads/manual``.
    source_digest: ``source_digest(manual_dir)``; when the dataset was prepared from a
      source with another digest (a replaced zip, say), it is prepared again, and the
      stale extraction of the zip is removed first.
  """
  stamp = files.join(data_dir, "market1501_source.json")
  builder = Market1501(data_dir=data_dir)
  if builder.is_prepared() and source_digest is not None:  # pytype: disable=attribute-error
    old = files.read_json(stamp).get("digest") if files.exists(stamp) else None
    if old != source_digest:
      logging.warning("market1501: the manual source in %s changed since %s was prepared: "
                      "preparing it again", manual_dir, data_dir)
      _discard_prepared(data_dir)
      builder = Market1501(data_dir=data_dir)
  if not builder.is_prepared():  # pytype: disable=attribute-error
    if not sys.stderr.isatty():  # no progress-bar escape codes in a redirected log
      tfds.disable_progress_bar()
    if source_digest is not None:
      _discard_prepared(data_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    start = time.time()
    builder.download_and_prepare(download_config=config)
    seconds = time.time() - start
    counts = {s: builder.info.splits[s].num_examples for s in SPLIT_FOLDERS}
    logging.info("market1501: prepared %s in %.1f s (%s)", data_dir, seconds,
                 ", ".join(f"{s} {n}" for s, n in counts.items()))
    if source_digest is not None:
      files.write_json(stamp, {"digest": source_digest, "manual_dir": str(manual_dir),
                               "prepare_seconds": round(seconds, 1), "examples": counts})
  return builder


def split_records(builder: tfds.core.DatasetBuilder, split: str) -> Records:
  """A split's rows as records (cameras 0-based, global times, file names), in split order."""
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.map(lambda ex: {k: ex[k] for k in ("id", "camera", "time", "filename")})
  out = {k: [] for k in ("id", "camera", "time", "filename")}
  for ex in ds.batch(8192).as_numpy_iterator():
    for k in out:
      out[k].append(ex[k])
  col = lambda k, dtype: (np.concatenate(out[k]) if out[k] else np.zeros(0)).astype(dtype)
  return Records(person_ids=col("id", np.int64), cameras=col("camera", np.int64) - 1,
                 times=col("time", np.int64), names=col("filename", str))


def decoded_images(builder: tfds.core.DatasetBuilder, split: str, indices) -> dict[int, np.ndarray]:
  """{index: uint8 [h, w, 3]} of the split's images at ``indices`` (for pictures), decoded
  as the pipelines decode them (``pipeline.decode``)."""
  wanted = set(int(i) for i in indices)
  out = {}
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  for i, ex in enumerate(ds.map(lambda ex: pipeline.decode(ex["image"])).as_numpy_iterator()):
    if i in wanted:
      out[i] = ex
      if len(out) == len(wanted):
        break
  return out
