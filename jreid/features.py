"""Feature extraction sharded over every device: uint8 boxes in, one Records row per image.

As the reference: the P x C pooled part features of an image plus those of its
horizontal flip; each part L2-normalised, then the whole vector
(``scoring.l2_normalise_features``). Batches cross to the device as uint8 at the
transfer size; the bicubic resize to the model's input size and the ImageNet
normalisation run inside the jitted step (``augment.to_model_input``). Exactly
one row per image, in split order, with id, camera (0-based) and time alongside.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np
from flax import nnx

from jreid import augment
from jreid import records as records_lib
from jreid import scoring
from jreid import sharding


def make_extract_step(graphdef, mesh, data_sharding, replicated,
                      image_size: tuple[int, int]) -> Callable:
  """jit(state, images uint8 [B, h, w, 3]) -> float32 [B, P, C] part features of the
  image plus those of its flip (not normalised); resized on the device to
  ``image_size`` (height, width) in the model's compute dtype. ``mesh`` is unused
  (the shardings carry it)."""
  del mesh
  size = tuple(image_size)

  def fn(state, images):
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    x = augment.to_model_input(images, size, model.config.backbone.dtype)
    return model.features(x) + model.features(x[:, :, ::-1, :])

  return jax.jit(fn, in_shardings=(replicated, data_sharding), out_shardings=data_sharding)


def extract(step: Callable, state: Any, batches: Iterator[dict[str, np.ndarray]],
            num_batches: int, to_global: Callable, data_sharding, num_parts: int,
            log: Callable[[str], None] | None = None) -> records_lib.Records:
  """Runs ``step`` over every batch; gathers, orders by index and drops padding.

  Args:
    batches: local batches of ``jreid.data.pipeline.eval_batches``: "image" uint8,
      "id", "camera" (0-based), "time", "index", "mask".
    to_global: (local pytree, sharding) -> global jax.Arrays (``sharding.to_global``).
    num_parts: P, for the per-part normalisation.
    log: called with a progress line every 20 batches.
  Returns:
    Records of the split in split order: features float32 [N, P * C] normalised,
    person_ids, cameras (0-based), times.
  """
  feats, keep = [], {k: [] for k in ("index", "mask", "id", "camera", "time")}
  for i, batch in enumerate(batches):
    images = to_global({"image": batch["image"]}, data_sharding)["image"]
    feats.append(sharding.gather(step(state, images)))
    for k in keep:
      keep[k].append(_gather_local(np.asarray(batch[k])))
    if log and (i + 1) % 20 == 0:
      log(f"extract: batch {i + 1}/{num_batches}")
  f = np.concatenate(feats)
  meta = {k: np.concatenate(v) for k, v in keep.items()}
  valid = meta["mask"].astype(bool)
  order = np.argsort(meta["index"][valid], kind="stable")
  index = meta["index"][valid][order]
  if not np.array_equal(index, np.arange(len(index))):
    raise RuntimeError(f"extraction covered {len(index)} rows but not each image exactly once")
  f = f[valid][order].reshape(len(index), -1)
  return records_lib.Records(person_ids=meta["id"][valid][order].astype(np.int64),
                             cameras=meta["camera"][valid][order].astype(np.int64),
                             times=meta["time"][valid][order].astype(np.int64),
                             features=scoring.l2_normalise_features(f, num_parts))


def _gather_local(x: np.ndarray) -> np.ndarray:
  """Every process's local rows, concatenated in process order (host numpy)."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x)).reshape((-1,) + x.shape[1:])
