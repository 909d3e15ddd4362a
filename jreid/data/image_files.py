"""Eval batches of image files (an image folder or a tracks table's images), for extraction.

The same per-image preprocessing and batch layout as the eval batches of the TFDS
splits (``jreid.data.pipeline.eval_batches``, whose image map this reuses): every
file exactly once across all processes, each process reading its contiguous share,
padded to one number of batches with ``mask = False`` rows. ``index`` is the row in
``paths``; id, camera and time are placeholders (0, 0 and 0): the caller keeps the
rows' own records and takes the features alone. Only this package imports
TensorFlow.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf

from jreid import errors
from jreid import files
from jreid.data import pipeline as data_pipeline


def _decode(path: tf.Tensor) -> tf.Tensor:
  return data_pipeline.decode(tf.io.read_file(path))


def batches(paths: Sequence[str], global_batch: int,
            transfer_size: tuple[int, int] = data_pipeline.TRANSFER_SIZE
            ) -> tuple[Iterator[dict[str, np.ndarray]], int]:
  """Local eval batches of ``paths`` (this process's share), as ``eval_batches``.

  Returns:
    (iterator, number of batches, the same on every process). Each batch: "image"
    uint8 [b, H, W, 3] at ``transfer_size`` (resized and normalised on the device by
    the extraction step), "index" int64 [b] (row in ``paths``), "mask" bool [b]
    (False on padding), "id", "camera", "time" int64 [b] placeholders.
  """
  n, me = jax.process_count(), jax.process_index()
  if global_batch % n:
    raise ValueError(f"eval batch {global_batch} must divide over {n} processes")
  local = global_batch // n
  total = len(paths)
  bounds = [(p * total) // n for p in range(n + 1)]
  lo, hi = bounds[me], bounds[me + 1]
  num_batches = max(1, math.ceil(max(b - a for a, b in zip(bounds[:-1], bounds[1:])) / local))
  H, W = transfer_size
  ds = tf.data.Dataset.from_tensor_slices(
      {"path": tf.constant([str(p) for p in paths[lo:hi]] or [""], tf.string),
       "index": tf.range(lo, max(hi, lo + 1), dtype=tf.int64)}).take(hi - lo)
  # The eval map of the TFDS splits (one host preprocessing for both paths).
  ds = ds.map(lambda ex: {
      "image": data_pipeline.fit_to_transfer_size(_decode(ex["path"]), transfer_size),
      "id": tf.constant(0, tf.int64), "camera": tf.constant(0, tf.int64),
      "time": tf.constant(0, tf.int64), "index": ex["index"], "mask": True},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  pad = tf.data.Dataset.from_tensors({
      "image": tf.zeros([H, W, 3], tf.uint8), "id": tf.constant(0, tf.int64),
      "camera": tf.constant(0, tf.int64), "time": tf.constant(0, tf.int64),
      "index": tf.constant(-1, tf.int64), "mask": False}).repeat()
  ds = ds.concatenate(pad).take(num_batches * local).batch(local).prefetch(tf.data.AUTOTUNE)
  return _naming_bad_images(ds.as_numpy_iterator(), [str(p) for p in paths[lo:hi]]), num_batches


def _naming_bad_images(it: Iterator[dict[str, np.ndarray]], paths: Sequence[str]
                       ) -> Iterator[dict[str, np.ndarray]]:
  """The batches; when one does not decode, errors.InputError naming the first file of
  this process's share (from those not yet delivered) that is not an image."""
  done = 0
  try:
    for batch in it:
      done += int(batch["mask"].sum())
      yield batch
  except tf.errors.OpError:
    def decode_one(path):
      if not files.exists(path):
        raise errors.InputError(f"{path}: no such image file")
      if files.isdir(path):
        raise errors.InputError(f"{path}: a folder, not an image")
      _decode(tf.constant(path))
    found = data_pipeline.first_undecodable(paths[done:], decode_one)
    if found is None:
      raise
    raise errors.InputError(f"{paths[done + found[0]]}: not an image (expected JPEG, PNG, "
                            f"BMP or GIF: {found[1]})") from None
