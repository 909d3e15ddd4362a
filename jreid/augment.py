"""Image preprocessing on the accelerator: uint8 boxes in, model inputs out.

The host sends uint8 boxes at a small fixed transfer size (Market's 128 x 64,
24,576 bytes an image); inside the jitted step they are resized (bicubic, as
``tf.image.resize(..., "bicubic")``), flipped, normalised with the ImageNet
statistics and randomly erased (Zhong et al., the reference's parameters). The
random draws of an image are a pure function of (seed, step, its position in the
global batch), so a resumed run and any split of the batch over devices or
processes see the same augmentation. Pure JAX: no TensorFlow, no configs.

Every kernel takes the draws as an input (``draws``), so each can be tested for
given draws; ``draw`` makes them from the keys.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# fold_in tag that separates the augmentation stream from the dropout keys
# (dropout folds the step straight into jax.random.key(seed)).
AUGMENT_STREAM = 0x617567  # "aug"

# TensorFlow's ResizeBicubic looks its Keys coefficients up in a table of
# 1024 steps per pixel (resize_bicubic_op.cc, kTableSize); so do we, to match it.
_TABLE_SIZE = 1024
_KEYS_A = -0.5


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Training augmentation (reference: flip, random erasing p 0.5, area 0.02-0.4, aspect 0.3-1/0.3).

  Attributes:
    flip: horizontal flip with probability 1/2.
    erase_probability: chance that an image is erased (0 switches erasing off).
    erase_area: (low, high) fraction of the image area of the rectangle.
    erase_min_aspect: r; the aspect h / w is uniform in [r, 1 / r].
    erase_attempts: rectangles tried; the first that fits inside the image is used.
  """
  flip: bool = True
  erase_probability: float = 0.5
  erase_area: tuple[float, float] = (0.02, 0.4)
  erase_min_aspect: float = 0.3
  erase_attempts: int = 10

  @property
  def num_draws(self) -> int:
    """Uniform draws per image: 1 flip + 4 per attempt + 1 erase-or-not."""
    return 2 + 4 * self.erase_attempts


def _keys_cubic(t: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel (a = -0.5) at distances t >= 0 (float32)."""
  a = np.float32(_KEYS_A)
  t = np.abs(t).astype(np.float32)
  near = ((a + 2) * t - (a + 3)) * t * t + 1
  far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
  """float32 [out_size, in_size]: row o holds the bicubic weights of output pixel o.

  As TensorFlow's ``tf.image.resize(..., "bicubic", antialias=False)``: half-pixel
  centres (source position (o + 0.5) * in / out - 0.5), Keys' kernel with
  a = -0.5 at the fractional offset rounded to 1/1024 pixel, taps outside the
  image dropped and the remaining weights renormalised to sum to 1.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  pos = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  base = np.floor(pos).astype(np.int64)
  delta = np.rint((pos - base) * _TABLE_SIZE).astype(np.float32) / _TABLE_SIZE
  weights = np.zeros((out_size, in_size), np.float32)
  for tap, dist in ((-1, 1 + delta), (0, delta), (1, 1 - delta), (2, 2 - delta)):
    index = base + tap
    w = np.where((index >= 0) & (index < in_size), _keys_cubic(dist), 0).astype(np.float32)
    np.add.at(weights, (np.arange(out_size), np.clip(index, 0, in_size - 1)), w)
  weights /= weights.sum(axis=1, keepdims=True)
  weights.setflags(write=False)  # cached and shared
  return weights


def resize_bicubic(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[B, h, w, C] (uint8 or real) -> float32 [B, H, W, C], bicubic (``bicubic_weights``).

  Two matrix products (rows, then columns) in float32 at full precision; values
  stay in the input's units (not clipped). Matches ``tf.image.resize(...,
  "bicubic")`` within 1e-3 of a grey level on 0-255 inputs (tests/test_augment.py).
  """
  H, W = size
  h, w = images.shape[1], images.shape[2]
  x = images.astype(jnp.float32)
  if (h, w) == (H, W):
    return x
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(bicubic_weights(h, H)), x, precision=hi)
  return jnp.einsum("pw,bowc->bopc", jnp.asarray(bicubic_weights(w, W)), x, precision=hi)


def normalise(images: jax.Array) -> jax.Array:
  """Pixels in [0, 1] -> (x - ImageNet mean) / ImageNet std, per channel, same dtype."""
  mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
  std = jnp.asarray(IMAGENET_STD, images.dtype)
  return (images - mean) / std


def to_model_input(images: jax.Array, size: tuple[int, int], dtype: Any = jnp.float32
                   ) -> jax.Array:
  """uint8 [B, h, w, 3] -> ``dtype`` [B, H, W, 3], the evaluation preprocessing.

  Bicubic resize to ``size``, clip to [0, 255], / 255, ImageNet normalisation, all
  in float32 (a few MFLOP an image, so exactness costs nothing), then cast to the
  model's compute dtype.
  """
  x = jnp.clip(resize_bicubic(images, size), 0.0, 255.0) / 255.0
  return normalise(x).astype(dtype)


def erase_rectangle(draws: jax.Array, height: int, width: int, params: AugmentParams
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """The random-erasing rectangle of one image from its uniform draws.

  Zhong et al.'s law with the draws laid out as: u[0:n] area fraction, u[n:2n]
  aspect, u[2n:3n] top, u[3n:4n] left, u[4n] erase-or-not (n = erase_attempts).
  Attempt i has area (lo + (hi - lo) u[i]) H W, aspect r + (1/r - r) u[n + i],
  h = round(sqrt(area aspect)), w = round(sqrt(area / aspect)) (half to even); the
  first attempt with h < H and w < W is used, at top = floor(u[2n + i] (H - h + 1)),
  left = floor(u[3n + i] (W - w + 1)). Erased when u[4n] < p and an attempt fits.

  Args:
    draws: float32 [4n + 1], uniform in [0, 1).
  Returns:
    (top, left, h, w) int32 pixels and ``erase`` bool, scalars.
  """
  n = params.erase_attempts
  u = draws.astype(jnp.float32)
  lo, hi = params.erase_area
  area = (lo + (hi - lo) * u[:n]) * float(height * width)
  r = params.erase_min_aspect
  aspect = r + (1.0 / r - r) * u[n:2 * n]
  h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (h < height) & (w < width)
  first = jnp.argmax(fits)
  h, w = h[first], w[first]
  top = jnp.floor(u[2 * n + first] * (height - h + 1).astype(jnp.float32)).astype(jnp.int32)
  left = jnp.floor(u[3 * n + first] * (width - w + 1).astype(jnp.float32)).astype(jnp.int32)
  erase = jnp.any(fits) & (u[4 * n] < params.erase_probability)
  return top, left, h, w, erase


def erase_mask(draws: jax.Array, height: int, width: int, params: AugmentParams) -> jax.Array:
  """bool [height, width]: True inside the erased rectangle of ``erase_rectangle``."""
  top, left, h, w, erase = erase_rectangle(draws, height, width, params)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & erase


def draw(seed: int, step: jax.Array, batch_size: int, params: AugmentParams) -> jax.Array:
  """float32 [batch_size, params.num_draws] uniform draws of every image of a global batch.

  Row i comes from fold_in(fold_in(fold_in(key(seed), AUGMENT_STREAM), step), i):
  a function of (seed, step, global position) alone.
  """
  base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), AUGMENT_STREAM), step)
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, jnp.arange(batch_size))
  return jax.vmap(lambda k: jax.random.uniform(k, (params.num_draws,)))(keys)


def train_input(images: jax.Array, draws: jax.Array, size: tuple[int, int],
                params: AugmentParams, dtype: Any = jnp.float32,
                crop_offsets: jax.Array | None = None, crop_pad: int = 0) -> jax.Array:
  """uint8 [B, h, w, 3] -> augmented ``dtype`` [B, H, W, 3] training inputs.

  ``to_model_input`` (bicubic resize to ``size``, clip, / 255, ImageNet
  normalisation, cast to ``dtype``), then a horizontal flip where draws[:, 0] < 1/2
  (if params.flip), then with ``crop_pad`` pad-and-crop at ``crop_offsets``
  (``pad_and_crop``, padding with 0: the mean colour), and random erasing (fill 0,
  after normalisation) from draws[:, 1:] (see ``erase_rectangle``). Without
  pad-and-crop: the old host pipeline's order and law; with it, the strong
  baseline's order (flip, pad-and-crop, erasing).

  Args:
    draws: float32 [B, params.num_draws] uniform in [0, 1) (``draw``).
    crop_offsets: int [B, 2] (``crop_offsets``), with ``crop_pad`` > 0.
  """
  H, W = size
  x = to_model_input(images, size, dtype)
  if params.flip:
    flip = draws[:, 0] < 0.5
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
  if crop_pad > 0:
    if crop_offsets is None:
      raise ValueError(f"crop_pad={crop_pad} needs crop_offsets (augment.crop_offsets)")
    x = pad_and_crop(x, crop_offsets, crop_pad)
  if params.erase_probability > 0:
    mask = jax.vmap(lambda u: erase_mask(u, H, W, params))(draws[:, 1:])
    x = jnp.where(mask[..., None], jnp.zeros((), dtype), x)
  return x


# Pad-and-crop (Luo et al. 2019: pad each image by 10 pixels and crop a random window of
# the original size back out), for the strong baseline; between the flip and erasing.

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


def crop_offsets(key: jax.Array, batch_size: int, pad: int) -> jax.Array:
  """int32 [B, 2] crop offsets uniform in [0, 2 pad] per image and axis (key: a PRNG key)."""
  return jax.random.randint(key, (batch_size, 2), 0, 2 * pad + 1)


def random_pad_crop(images: jax.Array, key: jax.Array, pad: int,
                    fill: Sequence[float] | float = 0.0) -> jax.Array:
  """pad_and_crop at ``crop_offsets(key, ...)`` (images already normalised)."""
  if pad <= 0:
    return images
  return pad_and_crop(images, crop_offsets(key, images.shape[0], pad), pad, fill)
