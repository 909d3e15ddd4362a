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
from jreid import progress
from jreid import records
from jreid import scoring
from jreid import sharding


def flip_features(model, images: jax.Array, image_size: tuple[int, int]) -> jax.Array:
  """uint8 [B, h, w, 3] boxes -> float32 [B, P, C]: the eval-mode model's part features
  of each image plus those of its horizontal flip (not normalised), after the
  evaluation preprocessing (``augment.to_model_input``: bicubic resize to
  ``image_size``, clip, ImageNet normalisation). Extraction and the exported models
  (``jreid.export``) both compute this."""
  x = augment.to_model_input(images, tuple(image_size), model.config.backbone.dtype)
  return model.features(x) + model.features(x[:, :, ::-1, :])


def make_extract_step(graphdef, mesh, image_size: tuple[int, int],
                      compiler_options: dict | None = None) -> Callable:
  """jit(state, images uint8 [B, h, w, 3]) -> float32 [B, P, C] part features of each
  image plus those of its flip (not normalised).

  ``state`` is the train state ``{"model", "optimizer"}`` (replicated); images are
  uint8 boxes at the transfer size, sharded over the mesh's data axis, resized to
  ``image_size`` (height, width) and normalised on the device in the model's
  compute dtype (``augment.to_model_input``). compiler_options: XLA's, for the model's
  convolutions (its backbone config's ``compiler_options()``).
  """
  size = tuple(image_size)

  def fn(state, images):
    model = nnx.merge(graphdef, state)["model"]
    model.eval()
    return flip_features(model, images, size)

  return jax.jit(fn, in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
                 out_shardings=sharding.data_sharding(mesh),
                 compiler_options=compiler_options or None)


def extract(step: Callable, state: Any, batches: Iterator[dict[str, np.ndarray]],
            num_batches: int, data_sharding, num_parts: int, name: str = "extract"
            ) -> records.Records:
  """Runs ``step`` over every batch; gathers, orders by index and drops padding.

  Batches (``jreid.data.pipeline.eval_batches``) carry "image" (uint8), "index"
  (position in the split), "mask" (False on padding), "id", "camera" (0-based,
  converted where the batch is made) and "time".
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
                         cameras=meta["camera"][valid][order].astype(np.int64),
                         times=meta["time"][valid][order].astype(np.int64),
                         features=scoring.l2_normalise_features(f, num_parts))
