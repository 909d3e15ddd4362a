"""Pad-and-crop: hand-checked windows, the fill, and the offset range."""

import jax
import jax.numpy as jnp
import numpy as np

from jreid import augment


def test_pad_and_crop_windows_by_hand():
  images = jnp.arange(2 * 3 * 2 * 1, dtype=jnp.float32).reshape(2, 3, 2, 1) + 1
  # pad 1, fill -5: offset (1, 1) is the identity; (0, 0) shifts down-right by one.
  out = augment.pad_and_crop(images, jnp.array([[1, 1], [0, 0]]), 1, fill=-5.0)
  np.testing.assert_array_equal(out[0], images[0])
  np.testing.assert_array_equal(out[1, :, :, 0], [[-5, -5], [-5, 7], [-5, 9]])
  # (2, 2): shifted up-left; per-channel fill.
  rgb = jnp.ones((1, 2, 2, 3))
  out = augment.pad_and_crop(rgb, jnp.array([[2, 2]]), 1, fill=(0.0, 0.5, -1.0))
  np.testing.assert_array_equal(out[0, 0, 0], [1, 1, 1])
  np.testing.assert_array_equal(out[0, 1, 1], [0.0, 0.5, -1.0])
  np.testing.assert_array_equal(out[0, 0, 1], [0.0, 0.5, -1.0])


def test_random_pad_crop_offsets_cover_the_range():
  images = jnp.zeros((400, 4, 4, 1)).at[:, 0, 0, 0].set(1.0)
  out = np.asarray(augment.random_pad_crop(images, jax.random.key(0), 2))
  # The marked pixel lands at (2 - dy, 2 - dx) for offsets dy, dx in 0..4; visible when >= 0.
  rows, cols = np.nonzero(out[..., 0].sum(axis=0))
  assert set(rows) == {0, 1, 2} and set(cols) == {0, 1, 2}
  assert out.sum() < 400 and out.sum() > 400 * 9 / 25 * 0.7  # 9 of 25 offsets keep it
  np.testing.assert_array_equal(augment.random_pad_crop(images, jax.random.key(0), 0),
                                images)
