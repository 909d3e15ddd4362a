"""The spatial-temporal model: per camera pair, the distribution of transit times.

Fitted from the training set exactly as ST-ReID does (``docs/reference.md``
section 2), vectorised over identities, camera pairs and bins, in float64 numpy
(the fit is a one-off over a few thousand numbers; float64 keeps it bit-for-bit
with the reference). Lookups over query x gallery matrices live in
``jreid.scoring`` as jitted kernels.

Conventions: cameras are 0-based here; times are integer ticks (global frame
indices for Market/Duke names and features files, milliseconds for tracks tables,
see ``jreid.tracks``); the table ``P[a, b, k]`` is the probability that a person
seen in camera ``a`` *after* being seen in camera ``b`` took between
``k * bin_width`` and ``(k + 1) * bin_width`` ticks to get there. The diagonal
(same camera) is zero. A model may carry the names of its cameras
(``camera_names[c]`` names camera index ``c``) and the ticks per second of its
times, so that a saved model maps a later table's cameras by name and its
pictures show seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zipfile

import numpy as np
import scipy.ndimage

from jreid import errors
from jreid import files

# The largest ST table fitted: C x C x H float64 values (the fit holds a few of them).
MAX_TABLE_BYTES = 2 << 30


@dataclasses.dataclass(frozen=True)
class STParams:
  """Constants of the ST model; defaults are the reference's Market-1501 values.

  Attributes:
    bin_width: ticks (frames for Market/Duke) per histogram bin (a positive integer).
    num_bins: number of bins H (reference: 5000 Market, 3000 Duke).
    sigma: standard deviation of the Gaussian smoothing, in bins.
    truncate: the kernel covers integer offsets |d| <= truncate * sigma.
    eps: the reference's epsilon in the mean and both normalisations.
  """
  bin_width: int = 100
  num_bins: int = 5000
  sigma: float = 50.0
  truncate: float = 3.0
  eps: float = 1e-7

  def __post_init__(self):
    if int(self.bin_width) != self.bin_width or self.bin_width <= 0:
      raise ValueError(f"bin_width must be a positive whole number of frames, "
                       f"got {self.bin_width!r}")
    if int(self.num_bins) != self.num_bins or self.num_bins <= 0:
      raise ValueError(f"num_bins must be a positive integer, got {self.num_bins!r}")
    if self.sigma < 0:
      raise ValueError(f"sigma must be >= 0 bins, got {self.sigma!r}")


@dataclasses.dataclass(frozen=True)
class STModel:
  """A fitted ST model.

  Attributes:
    table: float64 [C, C, H] smoothed probabilities P[later camera, earlier camera, bin].
    params: the constants it was fitted with.
    num_identities: identities in the training set.
    num_pair_counts: (identity, camera pair) counts that went into the histograms.
    num_out_of_range: counts whose time difference fell beyond the last bin (left out
      of the histograms and reported here, as the reference would have crashed).
    fingerprint: digest of the training (id, camera, time) arrays it was fitted on.
    camera_names: names of cameras 0..C-1 (empty: cameras known by index only, as
      for Market/Duke names).
    ticks_per_second: time ticks per second (25 for Market frames, 1000 for tracks
      tables); 0 when unknown. Only pictures and reports use it.
    pair_counts: int64 [C, C] training transits per pair that went into the table
      (the histogram's per-pair sums, before normalisation), or None for a model
      saved before they were kept.
  """
  table: np.ndarray
  params: STParams
  num_identities: int = 0
  num_pair_counts: int = 0
  num_out_of_range: int = 0
  fingerprint: str = ""
  camera_names: tuple[str, ...] = ()
  ticks_per_second: float = 0.0
  pair_counts: np.ndarray | None = None

  def __post_init__(self):
    if self.camera_names and len(self.camera_names) != self.table.shape[0]:
      raise ValueError(f"STModel: {len(self.camera_names)} camera names for a table of "
                       f"{self.table.shape[0]} cameras")
    if len(set(self.camera_names)) != len(self.camera_names):
      raise ValueError(f"STModel: camera names must be distinct, got {list(self.camera_names)}")

  @property
  def num_cameras(self) -> int:
    return self.table.shape[0]

  @property
  def bin_seconds(self) -> float | None:
    """Seconds per bin, when the ticks per second are known."""
    return self.params.bin_width / self.ticks_per_second if self.ticks_per_second else None

  def save(self, path: str) -> None:
    """Writes ``path`` (.npz, local or gs://) with the table and its metadata as JSON."""
    meta = dict(params=dataclasses.asdict(self.params), num_identities=self.num_identities,
                num_pair_counts=self.num_pair_counts,
                num_out_of_range=self.num_out_of_range, fingerprint=self.fingerprint,
                camera_names=list(self.camera_names),
                ticks_per_second=float(self.ticks_per_second))
    arrays = dict(table=self.table, meta=np.asarray(json.dumps(meta)))
    if self.pair_counts is not None:
      arrays["pair_counts"] = np.asarray(self.pair_counts, np.int64)
    files.save_npz(path, **arrays)

  @classmethod
  def load(cls, path: str) -> "STModel":
    """Reads a model written by ``save`` (files from before camera names still load)."""
    expected = "expected an ST model written by STModel.save (st_model.npz)"
    try:
      f = files.load_npz(path)
    except zipfile.BadZipFile:
      raise errors.InputError(f"{path!r} is not an .npz file: {expected}") from None
    if "table" not in f or "meta" not in f:
      raise errors.InputError(f"{path!r}: {expected}, with the keys 'table' and 'meta'; "
                              f"found {sorted(f)}")
    try:
      meta = json.loads(str(f["meta"]))
      meta["camera_names"] = tuple(str(c) for c in meta.get("camera_names", ()))
      return cls(table=f["table"], params=STParams(**meta.pop("params")),
                 pair_counts=f["pair_counts"] if "pair_counts" in f else None, **meta)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
      raise errors.InputError(f"{path!r}: its 'meta' is not an ST model's ({e}): "
                              f"{expected}") from None


def mean_time_per_identity_camera(labels: np.ndarray, cameras: np.ndarray,
                                  times: np.ndarray, num_cameras: int, eps: float
                                  ) -> tuple[np.ndarray, np.ndarray]:
  """Per (identity, camera): the reference's mean time sum(t) / (n + eps), and n.

  Args:
    labels: int [N] identity index in [0, num_identities).
    cameras: int [N] 0-based camera.
    times: [N] global frame.
  Returns:
    mean float64 [I, C] (0 where n = 0) and count int64 [I, C].
  """
  num_ids = int(labels.max()) + 1 if labels.size else 0
  flat = labels.astype(np.int64) * num_cameras + cameras.astype(np.int64)
  size = num_ids * num_cameras
  sums = np.bincount(flat, weights=times.astype(np.float64), minlength=size)
  counts = np.bincount(flat, minlength=size)
  mean = sums / (counts + eps)
  return mean.reshape(num_ids, num_cameras), counts.reshape(num_ids, num_cameras)


def transit_histograms(person_ids: np.ndarray, cameras: np.ndarray, times: np.ndarray,
                       num_cameras: int, params: STParams = STParams()
                       ) -> tuple[np.ndarray, int, int]:
  """Unnormalised counts hist[later, earlier, bin]: one per (identity, camera pair).

  For each identity and each camera pair j < k where it was seen in both, with mean
  times m_j, m_k: d = m_j - m_k; d > 0 counts in hist[j, k, int(d / w)], otherwise
  (equal times included) in hist[k, j, int(-d / w)].

  Args:
    person_ids: int [N] identities (any integers).
    cameras: int [N] 0-based cameras in [0, num_cameras).
    times: [N] global frames.
  Returns:
    (hist float64 [C, C, H], number of counts used, number beyond the last bin).
  """
  person_ids, cameras, times = (np.asarray(a).reshape(-1) for a in (person_ids, cameras, times))
  if not len(person_ids) == len(cameras) == len(times):
    raise ValueError(f"ids, cameras and times must have one entry per image, got "
                     f"{len(person_ids)}, {len(cameras)}, {len(times)}")
  if cameras.size and (cameras.min() < 0 or cameras.max() >= num_cameras):
    raise ValueError(f"cameras must be 0-based in [0, {num_cameras}), got "
                     f"[{cameras.min()}, {cameras.max()}]")
  H, C = params.num_bins, num_cameras
  hist = np.zeros((C, C, H), np.float64)
  if person_ids.size == 0:
    return hist, 0, 0
  _, labels = np.unique(person_ids, return_inverse=True)
  mean, count = mean_time_per_identity_camera(labels, cameras, times, C, params.eps)
  j, k = np.triu_indices(C, 1)                      # all unordered pairs j < k
  seen_both = (count[:, j] > 0) & (count[:, k] > 0)  # [I, pairs]
  d = mean[:, j] - mean[:, k]
  later = np.where(d > 0, j, k)[seen_both]
  earlier = np.where(d > 0, k, j)[seen_both]
  # int(d / w) of the reference, on the non-negative difference in either branch.
  bins = (np.abs(d) / float(params.bin_width))[seen_both].astype(np.int64)
  in_range = bins < H
  np.add.at(hist, (later[in_range], earlier[in_range], bins[in_range]), 1.0)
  return hist, int(in_range.sum()), int((~in_range).sum())


def gaussian_taps(sigma: float, truncate: float = 3.0, max_half: int | None = None
                  ) -> np.ndarray:
  """G(d) = exp(-d^2 / (2 sigma^2)) / (sigma sqrt(2 pi)) for d = -D..D, D = floor(truncate sigma)
  (at most ``max_half``).

  Not renormalised, as in the reference. float64 [2D + 1].
  """
  if sigma == 0:
    return np.ones(1)
  half = truncate * sigma
  half = int(math.floor(half if max_half is None else min(half, max_half)))
  d = np.arange(-half, half + 1, dtype=np.float64)
  return 1.0 / (sigma * math.sqrt(2 * math.pi)) * np.exp(-(d ** 2) / (2 * sigma ** 2))


def normalise_bins(hist: np.ndarray, eps: float) -> np.ndarray:
  """hist / (sum over bins + eps), per camera pair."""
  return hist / (hist.sum(axis=-1, keepdims=True) + eps)


def smooth_bins(hist: np.ndarray, sigma: float, truncate: float = 3.0) -> np.ndarray:
  """Gaussian smoothing along the last axis with zero padding ('same' convolution).

  Taps further than H - 1 bins from the centre only ever meet the zero padding, so a
  kernel wider than that (a huge sigma or truncate) is cut there: the same values, at
  a cost bounded by H."""
  taps = gaussian_taps(sigma, truncate, max_half=hist.shape[-1] - 1)
  return scipy.ndimage.convolve1d(hist, taps, axis=-1, mode="constant", cval=0.0)


def check_table_size(num_cameras: int, num_bins: int) -> None:
  """Raises errors.InputError, before anything is allocated, when the ST table of
  ``num_cameras`` x ``num_cameras`` x ``num_bins`` float64 would exceed MAX_TABLE_BYTES."""
  size = float(num_cameras) * num_cameras * num_bins * 8
  if size > MAX_TABLE_BYTES:
    raise errors.InputError(
        f"ST model: {num_cameras} cameras x {num_cameras} x {num_bins} bins would take "
        f"{size / 2**30:,.1f} GiB, above the {MAX_TABLE_BYTES / 2**30:g} GiB bound: camera "
        f"numbers run up to {num_cameras} (the table has a row per number up to the largest; "
        f"check for a stray camera number), and st.num_bins={num_bins}")


def bin_text(bin_width: int, ticks_per_second: float) -> str:
  """A bin's width for messages: ``"4 s (4000 ticks)"``, or ``"100 ticks"`` without a clock."""
  return (f"{bin_width / ticks_per_second:g} s ({bin_width} ticks)" if ticks_per_second
          else f"{bin_width} ticks")


def fit(person_ids: np.ndarray, cameras: np.ndarray, times: np.ndarray,
        num_cameras: int | None = None, params: STParams = STParams(),
        camera_names: tuple[str, ...] = (), ticks_per_second: float = 0.0) -> STModel:
  """Fits the ST model from the training set.

  Args:
    person_ids: int [N] identity of each training image.
    cameras: int [N] 0-based camera of each image.
    times: int [N] global time of each image, in ticks (frames for Market/Duke).
    num_cameras: C (default: max camera + 1, or the number of camera names).
    params: constants (reference defaults).
    camera_names: optional names of cameras 0..C-1, kept with the model.
    ticks_per_second: optional ticks per second of ``times``, kept with the model.
  Returns:
    The fitted ``STModel`` with ``table`` float64 [C, C, H].
  """
  cameras = np.asarray(cameras)
  if num_cameras is None:
    num_cameras = (len(camera_names) if camera_names else
                   int(cameras.max()) + 1 if cameras.size else 1)
  check_table_size(num_cameras, params.num_bins)
  hist, used, out = transit_histograms(person_ids, cameras, times, num_cameras, params)
  pair_counts = hist.sum(axis=-1).round().astype(np.int64)
  prob = normalise_bins(hist, params.eps)
  prob = normalise_bins(smooth_bins(prob, params.sigma, params.truncate), params.eps)
  return STModel(table=prob, params=params,
                 num_identities=len(np.unique(np.asarray(person_ids))),
                 num_pair_counts=used, num_out_of_range=out,
                 fingerprint=data_fingerprint(person_ids, cameras, times),
                 camera_names=tuple(str(c) for c in camera_names),
                 ticks_per_second=float(ticks_per_second), pair_counts=pair_counts)


def data_fingerprint(*arrays: np.ndarray) -> str:
  """A digest of the training arrays, to tell whether a saved model fits them."""
  digest = hashlib.sha1()
  for a in arrays:
    digest.update(np.ascontiguousarray(np.asarray(a, np.int64)).tobytes())
  return digest.hexdigest()
