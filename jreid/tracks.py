"""Tracks tables: a CSV of detections from any camera network -> ``Records`` + camera names.

One row per detection. Columns (header names, any order; other columns are ignored):

==========  ==========================================================================
image       path of the detection's image, relative to the table's folder or absolute;
            optional when the features come from a features file
person_id   integer identity (optional: leave the column out for an unlabelled table);
            as Market-1501, -1 is junk and 0 a distractor (left out of the ST fit)
camera      any string (``"cam1"``, ``"north gate"``); names map to 0-based indices
time        seconds as a number (``12.48``), an ISO-8601 timestamp
            (``2024-05-01T09:00:12.480``; without a zone it is read as UTC), or frame
            numbers when a per-camera frame rate is given (``fps``)
split       optional: ``train``, ``query`` or ``gallery``
==========  ==========================================================================

Time unit. ``Records.times`` of a table are int64 **milliseconds** since the earliest
detection of the tables read together (``TimeBase``): ``TICKS_PER_SECOND = 1000``.
The scoring kernels use int32 times, so the tables read together may span at most
2^31 - 1 ms (24.86 days); a longer span is an error, not a wrap-around. ST bins are set
in seconds (``st.bin_seconds``); their width in ticks is ``bin_seconds * 1000``
(``bin_width_ticks``).

Bad input raises ``TracksError`` naming the file, the line (the header is line 1),
the column and what was expected. No configs, no TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import math
import os
from typing import Mapping, Sequence

import numpy as np

from jreid import errors
from jreid import files
from jreid import progress
from jreid.records import Records

TICKS_PER_SECOND = 1000          # Records.times of tracks tables are milliseconds
MAX_TICKS = 2 ** 31 - 1          # int32 times in the scoring kernels
COLUMNS = ("image", "person_id", "camera", "time", "split")
SPLITS = ("train", "query", "gallery")
TIME_FORMS = ("seconds", "iso", "frames")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class TracksError(errors.InputError):
  """A tracks table that cannot be read as documented in ``jreid.tracks`` (a one-line
  user error: ``main.py`` prints it without a traceback)."""


@dataclasses.dataclass(frozen=True)
class Table:
  """A parsed, validated tracks table (times still absolute seconds).

  Attributes:
    path: the table's file.
    lines: int64 [N] line of each row in the file (the header is line 1).
    images: str [N] image paths (relative ones joined to the table's folder), or None.
    person_ids: int64 [N], or None for an unlabelled table.
    cameras: str [N] camera names.
    seconds: float64 [N] absolute time in seconds (POSIX seconds for ISO timestamps).
    splits: str [N] ("train", "query", "gallery"), or None.
    time_form: how the table wrote times: "seconds", "iso" or "frames".
  """
  path: str
  lines: np.ndarray
  images: np.ndarray | None
  person_ids: np.ndarray | None
  cameras: np.ndarray
  seconds: np.ndarray
  splits: np.ndarray | None
  time_form: str

  def __len__(self) -> int:
    return len(self.cameras)

  @property
  def labelled(self) -> bool:
    return self.person_ids is not None

  def select(self, index) -> "Table":
    take = lambda x: None if x is None else x[index]
    return dataclasses.replace(self, lines=self.lines[index], images=take(self.images),
                               person_ids=take(self.person_ids), cameras=self.cameras[index],
                               seconds=self.seconds[index], splits=take(self.splits))

  def split(self, name: str) -> "Table":
    """The rows of split ``name``; an error if the table has no split column."""
    if name not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    if self.splits is None:
      raise TracksError(f"{self.path}: has no 'split' column, so it has no {name!r} rows; "
                        f"add the column (train/query/gallery) or give a table per set")
    return self.select(self.splits == name)


def _where(path: str, line: int, column: str) -> str:
  return f"{path}: line {line}, column {column!r}"


def _parse_time(cell: str, where: str) -> tuple[str, float]:
  """(form, seconds) of one time cell: a finite number, or an ISO-8601 timestamp."""
  text = cell.strip()
  try:
    value = float(text)
  except ValueError:
    value = None
  if value is not None:
    if not math.isfinite(value):
      raise TracksError(f"{where}: {cell!r} is not a finite number of seconds")
    return "seconds", value
  try:
    stamp = datetime.datetime.fromisoformat(text)
  except ValueError:
    raise TracksError(f"{where}: {cell!r} is neither seconds (a number, e.g. 12.48) nor an "
                      f"ISO-8601 timestamp (e.g. 2024-05-01T09:00:12.480)") from None
  if stamp.tzinfo is None:
    stamp = stamp.replace(tzinfo=datetime.timezone.utc)
  return "iso", stamp.timestamp()


def _fps_of(fps: float | Mapping[str, float], camera: str, where: str) -> float:
  if isinstance(fps, Mapping):
    if camera not in fps:
      raise TracksError(f"{where}: camera {camera!r} has no frame rate; the frame rates given "
                        f"(fps) name {sorted(fps)}")
    value = fps[camera]
  else:
    value = fps
  if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
    raise TracksError(f"fps of camera {camera!r} must be a positive number, got {value!r}")
  return float(value)


# The largest identity: person ids are int64 and int32 on the device.
MAX_PERSON_ID = 2 ** 31 - 1


def read_table(path: str, fps: float | Mapping[str, float] | None = None,
               check_images: bool = True, require_labels: bool = False) -> Table:
  """Reads and validates a tracks table.

  Args:
    path: the CSV file (local or gs://).
    fps: None when ``time`` holds seconds or ISO timestamps; otherwise ``time`` holds
      frame numbers and ``fps`` is the frame rate of every camera (a number) or per
      camera name (a mapping).
    check_images: require the ``image`` column and that every image exists.
    require_labels: require the ``person_id`` column (e.g. to fit the ST model).
  Returns:
    The ``Table``.
  Raises:
    TracksError: naming the file, line and column: a missing file or column, an empty
      table, an unparseable time, id or split, a time form that changes between rows,
      a camera without a frame rate, an image that does not exist, duplicate rows
      (with their count) or one image listed twice.
  """
  path = os.fspath(path)
  if not files.isfile(path):
    raise TracksError(f"tracks table {path!r} does not exist (or is not a file)")
  try:
    text = files.read_bytes(path).decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise TracksError(f"{path}: not a UTF-8 text (CSV) file: {e}") from None
  reader = csv.reader(io.StringIO(text))
  header = next(reader, None)
  if header is None or not any(h.strip() for h in header):
    raise TracksError(f"{path}: empty table; expected a header line with the columns "
                      f"camera,time (and image, person_id, split as needed), then one row "
                      f"per detection")
  header = [h.strip() for h in header]
  required = ["camera", "time"] + (["image"] if check_images else []) + (
      ["person_id"] if require_labels else [])
  missing = [c for c in required if c not in header]
  if missing:
    raise TracksError(f"{path}: missing column(s) {missing}; expected the columns "
                      f"{required} (optional: {[c for c in COLUMNS if c not in required]}); "
                      f"the header has {header}")
  dupes = sorted({h for h in header if header.count(h) > 1 and h in COLUMNS})
  if dupes:
    raise TracksError(f"{path}: column(s) {dupes} appear more than once in the header")
  col = {name: header.index(name) for name in COLUMNS if name in header}
  folder = os.path.dirname(path)
  lines, images, pids, cams, secs, splits = [], [], [], [], [], []
  form, form_line = None, 0
  rows = iter(reader)
  meter = progress.Progress(f"{path}: reading", max(1, text.count("\n")), unit="lines")
  while True:
    try:
      row = next(rows)
    except StopIteration:
      break
    except csv.Error as e:  # e.g. a field longer than csv's limit (131,072 characters)
      raise TracksError(f"{path}: line {reader.line_num}: not a CSV row ({e}); expected "
                        f"short fields (camera names, times, ids, image paths)") from None
    line = reader.line_num
    if line % 4096 == 0:
      meter.update(line)
    if not row or all(not c.strip() for c in row):
      continue  # blank lines
    if len(row) != len(header):
      raise TracksError(f"{path}: line {line} has {len(row)} fields, the header has "
                        f"{len(header)} ({','.join(header)})")
    cell = lambda name: row[col[name]].strip()
    camera = cell("camera")
    if not camera:
      raise TracksError(f"{_where(path, line, 'camera')}: empty; expected a camera name")
    if not camera.isprintable():
      raise TracksError(f"{_where(path, line, 'camera')}: {camera!r} holds control "
                        f"characters (a NUL byte, a tab); expected a printable camera name")
    row_form, seconds = _parse_time(cell("time"), _where(path, line, "time"))
    if fps is not None:
      if row_form != "seconds":
        raise TracksError(f"{_where(path, line, 'time')}: {cell('time')!r} is not a frame "
                          f"number; with frame rates (fps) given, time holds frames")
      row_form = "frames"
      seconds = seconds / _fps_of(fps, camera, _where(path, line, "camera"))
    if form is None:
      form, form_line = row_form, line
    elif row_form != form:
      raise TracksError(f"{_where(path, line, 'time')}: {cell('time')!r} is written as "
                        f"{row_form} but line {form_line} as {form}; one table uses one form")
    if "person_id" in col:
      text = cell("person_id")
      try:
        pid = int(text)
      except ValueError:
        raise TracksError(f"{_where(path, line, 'person_id')}: {text!r} is not an integer "
                          f"identity (leave the column out for an unlabelled table)") from None
      if pid < -1 or pid > MAX_PERSON_ID:
        raise TracksError(f"{_where(path, line, 'person_id')}: {pid}; expected an identity "
                          f"from 1 to {MAX_PERSON_ID}, or -1 (junk) or 0 (distractor)")
      pids.append(pid)
    if "split" in col:
      split = cell("split").lower()
      if split not in SPLITS:
        raise TracksError(f"{_where(path, line, 'split')}: {cell('split')!r}; expected one of "
                          f"{', '.join(SPLITS)}")
      splits.append(split)
    if "image" in col:
      image = cell("image")
      if not image:
        raise TracksError(f"{_where(path, line, 'image')}: empty; expected an image path")
      if not (os.path.isabs(image) or files.is_remote(image)):
        image = files.join(folder, image) if folder else image
      images.append(image)
    lines.append(line)
    cams.append(camera)
    secs.append(seconds)
  if meter.logged:
    meter.finish()
  if not lines:
    raise TracksError(f"{path}: empty table (a header but no rows); expected one row per "
                      f"detection")
  table = Table(path=path, lines=np.asarray(lines, np.int64),
                images=np.asarray(images) if "image" in col else None,
                person_ids=np.asarray(pids, np.int64) if "person_id" in col else None,
                cameras=np.asarray(cams), seconds=np.asarray(secs, np.float64),
                splits=np.asarray(splits) if "split" in col else None, time_form=form)
  _check_duplicates(table)
  if check_images:
    _check_images(table)
  return table


def _check_duplicates(table: Table) -> None:
  """Errors on identical rows (with their count) and on one image listed twice."""
  seen: dict[tuple, int] = {}
  repeats = []
  columns = [[None] * len(table) if x is None else x.tolist() for x in
             (table.images, table.person_ids, table.cameras, table.seconds, table.splits)]
  for i, key in enumerate(zip(*columns)):
    if key in seen:
      repeats.append((int(table.lines[i]), int(table.lines[seen[key]])))
    else:
      seen[key] = i
  if repeats:
    line, first = repeats[0]
    raise TracksError(f"{table.path}: {len(repeats)} duplicate row(s), e.g. line {line} "
                      f"repeats line {first}; each detection must appear once")
  if table.images is not None:
    _, first, counts = np.unique(table.images, return_index=True, return_counts=True)
    if (counts > 1).any():
      i = first[np.argmax(counts > 1)]
      again = np.nonzero(table.images == table.images[i])[0]
      raise TracksError(f"{_where(table.path, int(table.lines[again[1]]), 'image')}: "
                        f"{str(table.images[i])!r} is also on line {int(table.lines[again[0]])} "
                        f"with other values ({int((counts > 1).sum())} image(s) listed "
                        f"more than once); each image is one detection")


def _check_images(table: Table) -> None:
  meter = progress.Progress(f"{table.path}: checking images", len(table), unit="images")
  missing, folders = [], []
  for i, image in enumerate(table.images.tolist()):
    if not files.isfile(image):  # one look for an image that is there
      (folders if files.isdir(image) else missing).append(i)
    if i % 4096 == 0:
      meter.update(i)
  if meter.logged:
    meter.finish()
  if missing:
    i = missing[0]
    raise TracksError(f"{_where(table.path, int(table.lines[i]), 'image')}: "
                      f"{str(table.images[i])!r} does not exist ({len(missing)} of {len(table)} "
                      f"images missing); paths are relative to the table's folder or absolute")
  if folders:
    i = folders[0]
    raise TracksError(f"{_where(table.path, int(table.lines[i]), 'image')}: "
                      f"{str(table.images[i])!r} is a folder ({len(folders)} of {len(table)} "
                      f"image paths are); expected an image file")


@dataclasses.dataclass(frozen=True)
class TimeBase:
  """Converts a table's absolute seconds to int64 ticks (ms) since ``origin_seconds``.

  Attributes:
    origin_seconds: the time of tick 0 (the earliest detection of the tables).
    form: "seconds", "iso" or "frames": how results write times back (ISO
      timestamps for "iso", absolute seconds otherwise).
  """
  origin_seconds: float
  form: str = "seconds"
  ticks_per_second: int = TICKS_PER_SECOND

  def ticks(self, table: Table) -> np.ndarray:
    """int64 [N] ticks of the table's rows; an error if any falls outside [0, 2^31)."""
    ticks = np.round((table.seconds - self.origin_seconds) * self.ticks_per_second)
    bad = (ticks < 0) | (ticks > MAX_TICKS)
    if bad.any():
      i = int(np.argmax(bad))
      span_days = MAX_TICKS / self.ticks_per_second / 86400
      raise TracksError(
          f"{_where(table.path, int(table.lines[i]), 'time')}: "
          f"{self.format(ticks[i])} is {abs(ticks[i]) / self.ticks_per_second / 86400:.1f} "
          f"days {'before' if ticks[i] < 0 else 'after'} the earliest detection; jreid counts "
          f"time in int32 milliseconds, so the tables searched together may span at most "
          f"{span_days:.2f} days ({int(bad.sum())} rows outside); split the footage by time")
    return ticks.astype(np.int64)

  def seconds(self, ticks) -> np.ndarray:
    """Absolute seconds of ``ticks``."""
    return self.origin_seconds + np.asarray(ticks, np.float64) / self.ticks_per_second

  def format(self, tick) -> float | str:
    """One tick as the table wrote times: an ISO-8601 string (UTC) or seconds."""
    s = float(self.seconds(tick))
    if self.form == "iso":
      return datetime.datetime.fromtimestamp(s, datetime.timezone.utc).isoformat(
          timespec="milliseconds")
    return round(s, 3)

  def to_dict(self) -> dict:
    return dict(origin_seconds=self.origin_seconds, form=self.form,
                ticks_per_second=self.ticks_per_second)


def time_base(*tables: Table) -> TimeBase:
  """The common time base of tables searched together: tick 0 at the earliest row."""
  forms = {"iso" if t.time_form == "iso" else "seconds" for t in tables}
  if len(forms) > 1:
    raise TracksError(f"tables {[t.path for t in tables]} mix ISO-8601 timestamps and "
                      f"seconds; use one form for the tables searched together")
  origin = min(float(t.seconds.min()) for t in tables)
  return TimeBase(origin_seconds=origin, form=tables[0].time_form)


def camera_names(*tables: Table, known: Sequence[str] = ()) -> tuple[str, ...]:
  """Camera names: ``known`` first (an ST model's, in its order), then new ones, sorted."""
  known = tuple(known)
  new = sorted(set().union(*(set(t.cameras.tolist()) for t in tables)) - set(known))
  return known + tuple(new)


def to_records(table: Table, names: Sequence[str], base: TimeBase) -> Records:
  """The table as ``Records``: cameras indexed in ``names``, times in ticks of ``base``.

  person_ids are -1 (junk: never a match) for an unlabelled table; ``Records.names``
  holds the image paths, or ``"<table>:<line>"`` when the table has no images.
  """
  index = {name: i for i, name in enumerate(names)}
  unknown = sorted(set(table.cameras.tolist()) - set(index))
  if unknown:
    raise TracksError(f"{table.path}: cameras {unknown} are not among the camera names "
                      f"{list(names)}")
  cameras = np.asarray([index[c] for c in table.cameras.tolist()], np.int64)
  ids = (table.person_ids if table.person_ids is not None
         else np.full(len(table), -1, np.int64))
  row_names = (table.images if table.images is not None else
               np.asarray([f"{table.path}:{line}" for line in table.lines]))
  return Records(person_ids=ids, cameras=cameras, times=base.ticks(table), names=row_names)


def folder_records(folder: str) -> Records:
  """The images of a folder (sorted by name) as ``Records`` to extract: names are the
  paths; no identity (-1), camera 0, time 0. An error if it holds no image."""
  if not files.isdir(folder):
    raise TracksError(f"image folder {folder!r} does not exist (or is not a folder)")
  paths = [files.join(folder, n) for n in sorted(files.listdir(folder))
           if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
  if not paths:
    raise TracksError(f"image folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
  n = len(paths)
  return Records(np.full(n, -1, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64),
                 names=np.asarray(paths))


def parse_fps(text) -> float | dict[str, float] | None:
  """Frame rates as written in a config: "" (times are seconds or ISO) -> None,
  "25" -> 25.0 for every camera, "cam1=25,cam2=30" -> {"cam1": 25.0, "cam2": 30.0}."""
  if text is None or (isinstance(text, str) and not text.strip()):
    return None
  if isinstance(text, (int, float)):
    return float(text)
  if isinstance(text, Mapping):
    return {str(k): float(v) for k, v in text.items()}
  text = str(text).strip()
  try:
    return float(text)
  except ValueError:
    pass
  rates = {}
  for part in text.split(","):
    name, sep, value = part.rpartition("=")
    try:
      if not sep or not name.strip():
        raise ValueError
      rates[name.strip()] = float(value)
    except ValueError:
      raise errors.InputError(
          f"tracks.fps: {part!r} in {text!r}; expected a number for every camera or "
          f"camera=fps pairs separated by commas (cam1=25,cam2=30)") from None
  return rates


def bin_width_ticks(bin_seconds: float, ticks_per_second: int = TICKS_PER_SECOND) -> int:
  """ST bin width in ticks for bins of ``bin_seconds``; a whole number of ticks >= 1."""
  width = bin_seconds * ticks_per_second
  if not (math.isfinite(width) and width >= 1 and abs(width - round(width)) < 1e-6):
    raise errors.InputError(f"st.bin_seconds must be a positive multiple of "
                     f"{1 / ticks_per_second:g} s (one tick), got {bin_seconds!r}")
  return int(round(width))


def unseen_cameras(records: Records, names: Sequence[str], num_model_cameras: int
                   ) -> dict[str, int]:
  """{camera name: detections} of the cameras with index >= the ST model's cameras.

  The policy for such cameras (documented in docs/cameras.md): their ST probability
  is 0 for every pair (``scoring.pair_st_probabilities`` gives 0 outside the table),
  so only the visual score ranks them; callers warn with these counts.
  """
  outside = records.cameras >= num_model_cameras
  found, counts = np.unique(records.cameras[outside], return_counts=True)
  return {names[int(c)]: int(n) for c, n in zip(found, counts)}
