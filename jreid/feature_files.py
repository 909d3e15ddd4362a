"""Reading and writing features files (.mat as the reference writes them, or .npz).

Keys: ``query_f``, ``query_label``, ``query_cam``, ``query_frames``, ``gallery_f``,
``gallery_label``, ``gallery_cam``, ``gallery_frames``. Vectors may arrive as 1 x N
(MATLAB); cameras are 1-based in the file and become 0-based ``Records`` here (the
one place features files enter); frames are global. Optional ``query_names`` and
``gallery_names`` (file names) are kept when present.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from jreid import errors
from jreid import files
from jreid.records import Records

SIDES = ("query", "gallery")
FIELDS = ("f", "label", "cam", "frames")
_ROWS = 65536  # rows per check, to keep temporaries small at any gallery size


def _load_raw(path: str) -> dict[str, np.ndarray]:
  if files.isdir(path):
    raise errors.InputError(f"features file {path!r} is a folder: expected a .mat or .npz file")
  if not files.isfile(path):
    raise FileNotFoundError(f"features file {path!r} does not exist")
  ext = os.path.splitext(os.fspath(path))[1].lower()
  if ext == ".npz":
    try:
      return files.load_npz(path)
    except zipfile.BadZipFile as e:
      raise errors.InputError(f"features file {path!r} is not a readable .npz (zip) file "
                              f"({e}); was it truncated?") from e
    except (EOFError, OSError, ValueError) as e:
      if isinstance(e, errors.InputError):
        raise
      raise errors.InputError(f"features file {path!r}: cannot read it ({e}); expected an "
                              f"np.savez file") from e
  if ext == ".mat":
    import scipy.io  # pylint: disable=g-import-not-at-top
    try:
      raw = scipy.io.loadmat(io.BytesIO(files.read_bytes(path)) if files.is_remote(path)
                             else path)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files.
      raise errors.InputError(f"{path!r} is a MATLAB v7.3 file, which scipy cannot read; "
                              f"save it with scipy.io.savemat or as .npz with the same keys"
                              ) from e
    except Exception as e:  # scipy raises ValueError, TypeError, OSError... on bad files
      raise errors.InputError(f"features file {path!r} is not a readable .mat file "
                              f"({type(e).__name__}: {e}); was it truncated?") from e
    return {k: v for k, v in raw.items() if not k.startswith("__")}
  raise errors.InputError(f"features file {path!r}: expected a .mat or .npz file")


def _whole_numbers(path: str, key: str, value: np.ndarray) -> np.ndarray:
  if value.dtype.kind not in "iuf":
    raise errors.InputError(f"{path!r}: {key} holds {value.dtype} values (e.g. "
                            f"{value.reshape(-1)[:1]!r}); expected whole numbers")
  as_float = value.astype(np.float64)
  if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
    raise errors.InputError(f"{path!r}: {key} must hold whole numbers")
  return value.astype(np.int64)


def _check_features(path: str, key: str, feats: np.ndarray) -> None:
  """Non-finite, all-zero and overflowing rows are errors naming the first rows."""
  bad = {"non-finite values (NaN or inf)": [], "all zeros": [],
         "values so large that their norm overflows float32": []}
  for start in range(0, len(feats), _ROWS):
    block = np.asarray(feats[start:start + _ROWS])
    finite = np.all(np.isfinite(block), axis=1)
    rows = np.arange(start, start + len(block))
    bad["non-finite values (NaN or inf)"].append(rows[~finite])
    with np.errstate(over="ignore", invalid="ignore"):
      norm = np.linalg.norm(block.astype(np.float32, copy=False), axis=1)
    bad["all zeros"].append(rows[finite & (norm == 0)])
    bad["values so large that their norm overflows float32"].append(
        rows[finite & ~np.isfinite(norm)])
  for what, found in bad.items():
    found = np.concatenate(found)
    if len(found):
      raise errors.InputError(f"{path!r}: {key} has {what} in {len(found)} rows (first rows "
                              f"{found[:5].tolist()}); expected finite, non-zero features")


def load_features(path: str) -> tuple[Records, Records, dict[str, np.ndarray]]:
  """Loads and validates a features file.

  Returns:
    (query, gallery, extras): records with features float32 [N, D] (as stored, not
    normalised), ids, 0-based cameras and global frames as int64 [N]; extras holds
    ``*_names`` if any.
  Raises:
    errors.InputError: naming the file and the key for missing keys, mismatched
      lengths, non-numeric, non-finite, all-zero or overflowing values, cameras < 1.
  """
  raw = _load_raw(path)
  missing = [f"{s}_{f}" for s in SIDES for f in FIELDS if f"{s}_{f}" not in raw]
  if missing:
    raise errors.InputError(f"{path!r} lacks the keys {missing}; expected "
                            f"{[f'{s}_{f}' for s in SIDES for f in FIELDS]} "
                            f"(found {sorted(raw)})")
  sets, extras = [], {}
  for side in SIDES:
    feats = np.asarray(raw[f"{side}_f"])
    if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] == 0:
      raise errors.InputError(f"{path!r}: {side}_f must be a non-empty [N, D] matrix (one "
                              f"row per image), got shape {feats.shape}")
    if feats.dtype.kind not in "fiu":
      raise errors.InputError(f"{path!r}: {side}_f holds {feats.dtype} values; expected "
                              f"numbers")
    n = feats.shape[0]
    meta = {}
    for field in FIELDS[1:]:
      key = f"{side}_{field}"
      v = np.asarray(raw[key]).reshape(-1)
      if v.shape[0] != n:
        raise errors.InputError(f"{path!r}: {key} has {v.shape[0]} entries but {side}_f has "
                                f"{n} rows")
      meta[field] = _whole_numbers(path, key, v)
    _check_features(path, f"{side}_f", feats)
    if meta["cam"].min() < 1:
      raise errors.InputError(f"{path!r}: {side}_cam must be 1-based cameras, found "
                              f"{meta['cam'].min()}")
    if meta["frames"].min() < 0 or meta["frames"].max() >= 2**31:
      raise errors.InputError(f"{path!r}: {side}_frames must be global frames in [0, 2^31)")
    sets.append(Records(person_ids=meta["label"], cameras=meta["cam"] - 1,
                        times=meta["frames"], features=feats.astype(np.float32, copy=False)))
    if f"{side}_names" in raw:
      extras[f"{side}_names"] = np.asarray(raw[f"{side}_names"]).reshape(-1)
  return sets[0], sets[1], extras


def save_features(path: str, query: Records, gallery: Records, **extras) -> None:
  """Writes an .npz features file with the keys above (atomically; local or gs://)."""
  arrays = {}
  for side, s in zip(SIDES, (query, gallery)):
    arrays.update({f"{side}_f": s.features, f"{side}_label": s.person_ids,
                   f"{side}_cam": s.cameras + 1, f"{side}_frames": s.times})
  arrays.update(extras)
  files.save_npz(path, **arrays)
