"""Feature extraction sharded over every device: image + flipped image, per-part norm.

As the reference: the P x C pooled part features of an image plus those of its
horizontal flip; each part L2-normalised, then the whole vector
(``scoring.l2_normalise_features``). Exactly one row per image, in split order,
with id, camera and time alongside.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jreid import scoring
from jreid.evaluate import ImageSet


def make_extract_step(graphdef, mesh, data_sharding, replicated) -> Callable:
  """jit(state, images [B, H, W, 3]) -> features [B, P, C] (flip-summed, not normalised)."""

  def fn(state, images):
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    return model.features(images) + model.features(images[:, :, ::-1, :])

  return jax.jit(fn, in_shardings=(replicated, data_sharding), out_shardings=data_sharding)


def extract(step: Callable, state: Any, batches: Iterator[dict[str, np.ndarray]],
            num_batches: int, to_global: Callable, data_sharding, num_parts: int,
            log: Callable[[str], None] | None = None) -> ImageSet:
  """Runs ``step`` over every batch; gathers, orders by index and drops padding.

  Returns the normalised ImageSet of the split (cameras 1-based, times global).
  """
  feats, keep = [], {k: [] for k in ("index", "mask", "id", "camera", "time")}
  for i, batch in enumerate(batches):
    images = to_global({"image": batch["image"]}, data_sharding)["image"]
    out = step(state, images)
    feats.append(np.asarray(multihost_utils.process_allgather(out, tiled=True)))
    for k in keep:
      keep[k].append(np.asarray(multihost_utils.process_allgather(batch[k])).reshape(-1))
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
  return ImageSet(features=scoring.l2_normalise_features(f, num_parts),
                  person_ids=meta["id"][valid][order].astype(np.int64),
                  cameras=meta["camera"][valid][order].astype(np.int64),
                  times=meta["time"][valid][order].astype(np.int64))
