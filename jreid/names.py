"""File-name grammars of ReID datasets -> identity, camera, sequence, frame, time.

Three grammars (``docs/reference.md`` section 1):

* Market-1501 ``PPPP_cXsY_FFFFFF_NN.jpg`` (``0002_c1s1_000451_03.jpg``, ids
  ``-1`` junk and ``0000`` distractor included). ``FFFFFF`` is local to the
  recording sequence ``sY`` of camera ``cX``; the global time is
  ``offset[camera][sequence] + frame`` with the reference offsets.
* Renamed Market-1501 ``PPPP_cX_fGGGGGGG_NN.jpg``: the reference's own renaming,
  frame already global. The sequence and local frame are recovered from the
  offsets (the sequence ``s`` with ``offset[s] < time <= offset[s + 1]``).
* DukeMTMC-reID ``PPPP_cX_fFFFFFFFF.jpg``: frame already global, one sequence.

A name may repeat its image extension once (``1488_c1s6_023021_00.jpg.jpg``): the
official Market-1501 zip names 24 of its query and gallery images so, and every
peer reads them. Nothing else about the grammar is loosened.

Times are frame indices, as in the reference. Cameras and sequences are 1-based
in ``ParsedName``, as in the names; ``parse_names`` turns names into
``records.Records``, where cameras are 0-based.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Sequence

import numpy as np

from jreid import errors
from jreid import files
from jreid import records as records_lib
from jreid.records import Records

# Maximum frame index of each (camera, sequence) of Market-1501, as the reference uses.
MARKET_SEQUENCE_MAX_FRAMES: dict[int, tuple[int, ...]] = {
    1: (72681, 74546, 74881, 74661, 74891, 54346),
    2: (163691, 164677, 98102),
    3: (161708, 161769, 104469),
    4: (72107, 72373, 74810, 74541, 74910, 50616),
    5: (161095, 161724, 103487),
    6: (87551, 131268, 95817, 30952),
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_MARKET = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)$")
_MARKET_RENAMED = re.compile(r"^(-?\d+)_c(\d+)_f(\d+)_(\d+)$")
_DUKE = re.compile(r"^(-?\d+)_c(\d+)_f(\d+)$")

GRAMMARS = ("market", "market_renamed", "duke")


class BadNameError(errors.InputError):
  """A file name that fits none of the grammars."""


@dataclasses.dataclass(frozen=True)
class ParsedName:
  """What a file name says about its image.

  Attributes:
    person_id: identity; -1 junk, 0 distractor (Market gallery).
    camera: 1-based camera index.
    sequence: 1-based recording sequence of that camera (1 for Duke).
    frame: frame index local to the sequence.
    time: global frame index (offset of the sequence + local frame).
    grammar: one of ``GRAMMARS``.
  """
  person_id: int
  camera: int
  sequence: int
  frame: int
  time: int
  grammar: str


def sequence_offsets(max_frames: dict[int, Sequence[int]] = MARKET_SEQUENCE_MAX_FRAMES
                     ) -> dict[int, tuple[int, ...]]:
  """Offsets of sequences 1..N of each camera: cumulative sums of earlier maxima."""
  return {cam: tuple(int(x) for x in np.concatenate([[0], np.cumsum(m)[:-1]]))
          for cam, m in max_frames.items()}


MARKET_SEQUENCE_OFFSETS = sequence_offsets()


def _stem(name: str) -> str:
  """The base name without its image extension, or without it twice when it is
  repeated (``x.jpg.jpg``, as the official Market-1501 zip has)."""
  base = os.path.basename(name)
  stem, ext = os.path.splitext(base)
  if ext.lower() not in IMAGE_EXTENSIONS:
    raise BadNameError(
        f"{name!r}: expected an image file name ending in one of {IMAGE_EXTENSIONS}")
  inner, inner_ext = os.path.splitext(stem)
  return inner if inner_ext.lower() == ext.lower() else stem


def _camera_offsets(camera: int, name: str) -> tuple[int, ...]:
  if camera not in MARKET_SEQUENCE_OFFSETS:
    raise BadNameError(f"{name!r}: camera c{camera} is not one of the Market-1501 cameras "
                       f"{sorted(MARKET_SEQUENCE_OFFSETS)}")
  return MARKET_SEQUENCE_OFFSETS[camera]


def market_global_time(camera: int, sequence: int, frame: int, name: str = "") -> int:
  """offset[camera][sequence] + frame, with the reference's offsets."""
  offsets = _camera_offsets(camera, name)
  if not 1 <= sequence <= len(offsets):
    raise BadNameError(f"{name!r}: sequence s{sequence} of camera c{camera} is outside the "
                       f"reference's s1..s{len(offsets)}")
  return offsets[sequence - 1] + frame


def split_global_time(camera: int, time: int, name: str = "") -> tuple[int, int]:
  """Inverse of ``market_global_time``: (sequence, local frame) of a global time.

  The sequence s is the one with offset[s] < time <= offset[s + 1] (local frames
  start at 1); time 0 belongs to s1.
  """
  offsets = _camera_offsets(camera, name)
  seq = max(1, int(np.searchsorted(np.asarray(offsets), time, side="left")))
  return seq, time - offsets[seq - 1]


def market_name(person_id: int, camera: int, time: int, box: int = 1) -> str:
  """The Market-1501 file name of a box at global ``time``: the inverse of ``parse_name``."""
  sequence, frame = split_global_time(camera, time)
  prefix = "-1" if person_id < 0 else f"{person_id:04d}"
  return f"{prefix}_c{camera}s{sequence}_{frame:06d}_{box:02d}.jpg"


def parse_name(name: str, grammar: str | None = None) -> ParsedName:
  """Parses one image file name (a path is fine: only its base name is read).

  Args:
    name: file name or path.
    grammar: one of ``GRAMMARS`` to insist on, or None to accept any.

  Raises:
    BadNameError: naming the file, when it fits no (or not the requested) grammar.
  """
  stem = _stem(name)
  if grammar is not None and grammar not in GRAMMARS:
    raise ValueError(f"grammar must be one of {GRAMMARS}, got {grammar!r}")
  m = _MARKET.match(stem)
  if m and grammar in (None, "market"):
    pid, cam, seq, frame, _ = (int(g) for g in m.groups())
    time = market_global_time(cam, seq, frame, name=name)
    return ParsedName(pid, cam, seq, frame, time, "market")
  m = _MARKET_RENAMED.match(stem)
  if m and grammar in (None, "market_renamed"):
    pid, cam, time, _ = (int(g) for g in m.groups())
    seq, frame = split_global_time(cam, time, name=name)
    return ParsedName(pid, cam, seq, frame, time, "market_renamed")
  m = _DUKE.match(stem)
  if m and grammar in (None, "duke"):
    pid, cam, time = (int(g) for g in m.groups())
    return ParsedName(pid, cam, 1, time, time, "duke")
  expected = {
      None: "Market-1501 'PPPP_cXsY_FFFFFF_NN.jpg', renamed Market "
            "'PPPP_cX_fGGGGGGG_NN.jpg' or DukeMTMC-reID 'PPPP_cX_fFFFFFFFF.jpg'",
      "market": "Market-1501 'PPPP_cXsY_FFFFFF_NN.jpg'",
      "market_renamed": "renamed Market 'PPPP_cX_fGGGGGGG_NN.jpg'",
      "duke": "DukeMTMC-reID 'PPPP_cX_fFFFFFFFF.jpg'",
  }[grammar]
  raise BadNameError(f"{name!r} does not fit the file-name grammar: expected {expected}")


def parse_names(names: Iterable[str], grammar: str | None = None) -> Records:
  """Parses many names into records (cameras 0-based, times global frames, names kept).

  Every name must fit one grammar: the one asked for, else the first name's. Names
  that fit none raise one ``BadNameError`` with their count and the first three. A
  list that mixes grammars (Market and Duke names, say) raises ``BadNameError``
  naming the first name that differs, since their times are not comparable.
  """
  names = tuple(names)
  parsed, kept, rejected = [], [], []
  for n in names:
    try:
      p = parse_name(n, grammar)
    except BadNameError as e:
      rejected.append(str(e))
      continue
    if grammar is None and parsed and p.grammar != parsed[0].grammar:
      raise BadNameError(f"{n!r} is a {p.grammar} name but {kept[0]!r} is a "
                         f"{parsed[0].grammar} name: expected one grammar per folder")
    parsed.append(p)
    kept.append(n)
  if rejected:
    raise BadNameError(
        rejected[0] if len(rejected) == 1 else
        f"{len(rejected)} of {len(names)} names do not fit the file-name grammar; the first "
        f"{min(len(rejected), 3)}: " + "; ".join(rejected[:3]))
  col = lambda f: np.asarray([getattr(p, f) for p in parsed], dtype=np.int64).reshape(-1)
  return Records(person_ids=col("person_id"), cameras=col("camera") - 1, times=col("time"),
                 names=np.asarray(names, dtype=str))


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """Image names of a folder as records, plus what was skipped (never silently)."""
  records: Records
  skipped: tuple[str, ...]


def list_image_folder(folder: str, grammar: str | None = None) -> FolderListing:
  """Parses the names of every image in ``folder`` (not recursive), sorted.

  Files that are not images (``Thumbs.db`` in the official zip, say) are skipped and
  reported in ``skipped``; an image whose name fits no grammar raises, naming it.
  """
  if not files.exists(folder):
    raise FileNotFoundError(f"{folder!r} does not exist: expected a folder of training images")
  if not files.isdir(folder):
    raise BadNameError(f"{folder!r} is a file: expected a folder of training images")
  entries = files.listdir(folder)
  is_image = [os.path.splitext(e)[1].lower() in IMAGE_EXTENSIONS for e in entries]
  images = [e for e, keep in zip(entries, is_image) if keep]
  skipped = tuple(e for e, keep in zip(entries, is_image) if not keep)
  if not images:
    raise BadNameError(f"{folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                       f"expected e.g. Market-1501's bounding_box_train "
                       f"({len(skipped)} other entries)")
  return FolderListing(parse_names(images, grammar), skipped)


def warn_if_test_split(records: Records, where: str, log) -> None:
  """Warns (through ``log``) when training names include junk (-1) or distractors (0).

  A real training split has neither; a test split (Market's bounding_box_test) has
  both. They are left out of training and of the ST fit; the warning gives counts.
  """
  junk = int((records.person_ids == records_lib.JUNK_ID).sum())
  distractors = int((records.person_ids == records_lib.DISTRACTOR_ID).sum())
  if junk or distractors:
    log("%s holds %d junk (id -1) and %d distractor (id 0) images of %d: they are left out "
        "of training and of the ST fit. A training split has none; this looks like a test "
        "split (e.g. bounding_box_test)", where, junk, distractors, len(records))
