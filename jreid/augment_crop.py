"""Pad-and-crop augmentation on the device, a pure JAX function (to fold into jreid/augment.py).

Luo et al. 2019 pad each 256 x 128 image by 10 pixels (zeros, i.e. black, before
normalisation) and crop a random 256 x 128 window back out.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def pad_and_crop(images: jax.Array, offsets: jax.Array, pad: int,
                 fill: Sequence[float] | float = 0.0) -> jax.Array:
  """[B, H, W, C] -> [B, H, W, C]: pad by ``pad`` pixels of ``fill``, crop at offsets.

  Args:
    images: a batch of images (any units, e.g. ImageNet-normalised).
    offsets: int [B, 2] top-left (row, column) of each crop in the padded image,
      each in [0, 2 pad]; (pad, pad) gives the image back.
    pad: pixels added on every side.
    fill: the padding value, per channel [C] or scalar, in the images' units
      (black in normalised units is -mean / std).
  """
  b, h, w, c = images.shape
  fill = jnp.broadcast_to(jnp.asarray(fill, images.dtype), (c,))
  # Padding (images - fill) with zeros keeps the batch's sharding (no scatter); the
  # crop is a select over the 2 pad + 1 static row windows, then the column windows
  # (elementwise, so any batch sharding is kept).
  canvas = jnp.pad(images - fill, ((0, 0), (pad, pad), (pad, pad), (0, 0))) + fill
  offsets = offsets.astype(jnp.int32)
  rows = sum(jnp.where((offsets[:, 0] == dy)[:, None, None, None], canvas[:, dy:dy + h], 0)
             for dy in range(2 * pad + 1))
  return sum(jnp.where((offsets[:, 1] == dx)[:, None, None, None], rows[:, :, dx:dx + w], 0)
             for dx in range(2 * pad + 1))


def random_pad_crop(images: jax.Array, key: jax.Array, pad: int,
                    fill: Sequence[float] | float = 0.0) -> jax.Array:
  """pad_and_crop with offsets uniform in [0, 2 pad] per image and axis (key: a PRNG key)."""
  if pad <= 0:
    return images
  offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * pad + 1)
  return pad_and_crop(images, offsets, pad, fill)
