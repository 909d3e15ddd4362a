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

from jreid import progress
from jreid import records
from jreid import scoring
from jreid import sharding


def make_extract_step(graphdef, mesh) -> Callable:
  """jit(state, images [B, H, W, 3]) -> features [B, P, C] (flip-summed, not normalised).

  ``state`` is the train state ``{"model", "optimizer"}`` (replicated); images are
  sharded over the mesh's data axis.
  """

  def fn(state, images):
    model = nnx.merge(graphdef, state)["model"]
    model.eval()
    return model.features(images) + model.features(images[:, :, ::-1, :])

  return jax.jit(fn, in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
                 out_shardings=sharding.data_sharding(mesh))


def extract(step: Callable, state: Any, batches: Iterator[dict[str, np.ndarray]],
            num_batches: int, data_sharding, num_parts: int, name: str = "extract"
            ) -> records.Records:
  """Runs ``step`` over every batch; gathers, orders by index and drops padding.

  Batches carry "image", "index" (position in the split), "mask" (False on
  padding), "id", "camera" (1-based, as the TFDS split) and "time".
  Returns the split's records in split order, one row per image: normalised
  features, cameras 0-based.
  """
  feats, keep = [], {k: [] for k in ("index", "mask", "id", "camera", "time")}
  meter = progress.Progress(name, num_batches, unit="batches")
  for i, batch in enumerate(batches):
    images = sharding.to_global({"image": batch["image"]}, data_sharding)["image"]
    feats.append(sharding.gather(step(state, images)))
    for k in keep:
      keep[k].append(sharding.gather(np.asarray(batch[k])).reshape(-1))
    meter.update(i + 1)
  meter.finish()
  f = np.concatenate(feats)
  meta = {k: np.concatenate(v) for k, v in keep.items()}
  valid = meta["mask"].astype(bool)
  order = np.argsort(meta["index"][valid], kind="stable")
  index = meta["index"][valid][order]
  if not np.array_equal(index, np.arange(len(index))):
    raise RuntimeError(f"extraction covered {len(index)} rows but not each image exactly once")
  f = f[valid][order].reshape(len(index), -1)
  return records.Records(person_ids=meta["id"][valid][order].astype(np.int64),
                         cameras=meta["camera"][valid][order].astype(np.int64) - 1,
                         times=meta["time"][valid][order].astype(np.int64),
                         features=scoring.l2_normalise_features(f, num_parts))
