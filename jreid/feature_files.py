"""Reading and writing features files (.mat as the reference writes them, or .npz).

Keys: ``query_f``, ``query_label``, ``query_cam``, ``query_frames``, ``gallery_f``,
``gallery_label``, ``gallery_cam``, ``gallery_frames``. Vectors may arrive as 1 x N
(MATLAB); cameras are 1-based; frames are global. Optional ``query_names`` and
``gallery_names`` (file names) are kept when present.
"""

from __future__ import annotations

import io
import os

import numpy as np

from jreid import files
from jreid.evaluate import ImageSet

SIDES = ("query", "gallery")
FIELDS = ("f", "label", "cam", "frames")


def _load_raw(path: str) -> dict[str, np.ndarray]:
  if not files.isfile(path):
    raise FileNotFoundError(f"features file {path!r} does not exist")
  ext = os.path.splitext(os.fspath(path))[1].lower()
  if ext == ".npz":
    return files.load_npz(path)
  if ext == ".mat":
    import scipy.io  # pylint: disable=g-import-not-at-top
    try:
      raw = scipy.io.loadmat(io.BytesIO(files.read_bytes(path)) if files.is_remote(path)
                             else path)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files.
      raise ValueError(f"{path!r} is a MATLAB v7.3 file, which scipy cannot read; save it "
                       f"with scipy.io.savemat or as .npz with the same keys") from e
    return {k: v for k, v in raw.items() if not k.startswith("__")}
  raise ValueError(f"features file {path!r}: expected a .mat or .npz file")


def load_features(path: str) -> tuple[ImageSet, ImageSet, dict[str, np.ndarray]]:
  """Loads and validates a features file.

  Returns:
    (query, gallery, extras): features as float32 [N, D] (not yet normalised), ids,
    1-based cameras and global frames as int64 [N]; extras holds ``*_names`` if any.
  Raises:
    ValueError: naming the file and the key for missing keys, mismatched lengths,
      non-finite features, non-integer frames or cameras < 1.
  """
  raw = _load_raw(path)
  missing = [f"{s}_{f}" for s in SIDES for f in FIELDS if f"{s}_{f}" not in raw]
  if missing:
    raise ValueError(f"{path!r} lacks the keys {missing}; expected "
                     f"{[f'{s}_{f}' for s in SIDES for f in FIELDS]} (found {sorted(raw)})")
  sets, extras = [], {}
  for side in SIDES:
    feats = np.asarray(raw[f"{side}_f"])
    if feats.ndim == 1:
      feats = feats[None, :]
    if feats.ndim != 2 or feats.shape[0] == 0:
      raise ValueError(f"{path!r}: {side}_f must be a non-empty [N, D] matrix, "
                       f"got shape {feats.shape}")
    n = feats.shape[0]
    meta = {}
    for field in FIELDS[1:]:
      key = f"{side}_{field}"
      v = np.asarray(raw[key]).reshape(-1)
      if v.shape[0] != n:
        raise ValueError(f"{path!r}: {key} has {v.shape[0]} entries but {side}_f has {n} rows")
      if not np.all(np.isfinite(v.astype(np.float64))) or np.any(v != np.round(v)):
        raise ValueError(f"{path!r}: {key} must hold whole numbers")
      meta[field] = v.astype(np.int64)
    bad = np.concatenate([~np.all(np.isfinite(feats[i:i + 65536]), axis=1)
                          for i in range(0, n, 65536)])
    if bad.any():
      raise ValueError(f"{path!r}: {side}_f has non-finite values (NaN or inf) in "
                       f"{int(bad.sum())} rows, first row {int(np.argmax(bad))}")
    if meta["cam"].min() < 1:
      raise ValueError(f"{path!r}: {side}_cam must be 1-based cameras, found {meta['cam'].min()}")
    if meta["frames"].min() < 0 or meta["frames"].max() >= 2**31:
      raise ValueError(f"{path!r}: {side}_frames must be global frames in [0, 2^31)")
    sets.append(ImageSet(features=feats.astype(np.float32, copy=False),
                         person_ids=meta["label"], cameras=meta["cam"], times=meta["frames"]))
    if f"{side}_names" in raw:
      extras[f"{side}_names"] = np.asarray(raw[f"{side}_names"]).reshape(-1)
  if "training_fingerprint" in raw:
    extras["training_fingerprint"] = raw["training_fingerprint"]
  return sets[0], sets[1], extras


def save_features(path: str, query: ImageSet, gallery: ImageSet, **extras) -> None:
  """Writes an .npz features file with the keys above (atomically; local or gs://)."""
  arrays = {}
  for side, s in zip(SIDES, (query, gallery)):
    arrays.update({f"{side}_f": s.features, f"{side}_label": s.person_ids,
                   f"{side}_cam": s.cameras, f"{side}_frames": s.times})
  arrays.update(extras)
  files.save_npz(path, **arrays)
