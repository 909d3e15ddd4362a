"""The one per-image record of jreid, and the two helpers every chunked kernel uses.

Every path that brings images or detections in (file names, the TFDS splits,
features files, tracks tables) turns them into ``Records`` once, where the data
enters: cameras become 0-based there and nowhere else. Everything downstream
(ST fit, scoring, evaluation, re-ranking, search, pictures) reads ``Records``.
No TensorFlow, no configs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

JUNK_ID = -1          # Market/Duke junk boxes (and, in evaluation, junk for every query)
DISTRACTOR_ID = 0     # Market distractors ("0000"): a negative for every query


@dataclasses.dataclass(frozen=True)
class Records:
  """One row per image: who, where, when and (once extracted) what it looks like.

  Attributes:
    person_ids: int64 [N]; -1 junk, 0 distractor (Market/Duke conventions).
    cameras: int64 [N], 0-based camera index (``camera_names[c]`` names it when known).
    times: int64 [N], global time in ticks: frames for Market/Duke names and
      features files; for tracks tables, the unit the table reader states.
    features: float32 [N, D] or None (not extracted yet).
    names: str [N] file names or image paths, or None.
  """
  person_ids: np.ndarray
  cameras: np.ndarray
  times: np.ndarray
  features: np.ndarray | None = None
  names: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.person_ids)
    for field in ("cameras", "times", "features", "names"):
      value = getattr(self, field)
      if value is not None and len(value) != n:
        raise ValueError(f"Records: {field} has {len(value)} rows, person_ids has {n}")

  def __len__(self) -> int:
    return len(self.person_ids)

  def select(self, index) -> "Records":
    """The rows ``index`` (an int array or a boolean mask), every field alike."""
    take = lambda x: None if x is None else x[index]
    return Records(self.person_ids[index], self.cameras[index], self.times[index],
                   take(self.features), take(self.names))

  def with_features(self, features: np.ndarray) -> "Records":
    return dataclasses.replace(self, features=features)

  @property
  def num_cameras(self) -> int:
    """max camera + 1 (0 for no rows)."""
    return int(self.cameras.max()) + 1 if len(self) else 0


def chunk_rows(total_rows: int, row_length: int, budget_elements: int, multiple: int = 8) -> int:
  """Rows per chunk so that rows x row_length <= budget_elements.

  Rounded down to a multiple of ``multiple`` when there is room for one, at least 1
  and at most ``total_rows``. Every chunked kernel (evaluation, re-ranking, search)
  sizes its quadratic blocks with this, from the one budget in the config.
  """
  rows = max(1, budget_elements // max(1, row_length))
  if rows >= multiple:
    rows -= rows % multiple
  return max(1, min(rows, max(1, total_rows)))


def pad_rows(x: np.ndarray, rows: int, value) -> np.ndarray:
  """x [n, ...] padded with ``value`` to [rows, ...] (so every chunk has one shape)."""
  x = np.asarray(x)
  if len(x) == rows:
    return x
  if len(x) > rows:
    raise ValueError(f"pad_rows: {len(x)} rows do not fit in {rows}")
  pad = np.full((rows - len(x),) + x.shape[1:], value, dtype=x.dtype)
  return np.concatenate([x, pad])
