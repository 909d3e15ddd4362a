"""On-device preprocessing: bicubic resize against TensorFlow, erasing, flip, keys."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jreid import augment

# Largest |jreid - tf.image.resize(..., "bicubic")| allowed, in grey levels of 0..255
# inputs (float32; the two sum the same weights in different orders).
RESIZE_TOLERANCE = 1e-3


@pytest.mark.parametrize("src,dst", [((128, 64), (384, 192)), ((128, 64), (256, 128)),
                                     ((64, 32), (32, 16)), ((37, 23), (100, 51)),
                                     ((128, 64), (128, 64))])
def test_resize_matches_tensorflow_bicubic(src, dst):
  tf = pytest.importorskip("tensorflow")
  images = np.random.default_rng(0).integers(0, 256, (2,) + src + (3,)).astype(np.uint8)
  want = tf.image.resize(tf.cast(images, tf.float32), dst, method="bicubic").numpy()
  got = np.asarray(augment.resize_bicubic(jnp.asarray(images), dst))
  assert got.shape == want.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=RESIZE_TOLERANCE)


def test_model_input_is_the_old_host_preprocessing():
  tf = pytest.importorskip("tensorflow")
  images = np.random.default_rng(1).integers(0, 256, (3, 32, 16, 3)).astype(np.uint8)
  old = tf.image.resize(tf.cast(images, tf.float32), (96, 48), method="bicubic")
  old = (tf.clip_by_value(old, 0.0, 255.0) / 255.0 - augment.IMAGENET_MEAN) / augment.IMAGENET_STD
  got = augment.to_model_input(jnp.asarray(images), (96, 48))
  np.testing.assert_allclose(np.asarray(got), old.numpy(), rtol=0, atol=1e-5)
  half = augment.to_model_input(jnp.asarray(images), (96, 48), jnp.bfloat16)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), old.numpy(), rtol=0, atol=2e-2)


def test_bicubic_weights_by_hand():
  # 2 -> 4 pixels: output o sits at (o + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25.
  # o = 1: taps -1 (out), 0, 1, 2 (out) at distances 0.25, 0.75: Keys a = -0.5 gives
  # k(0.25) = 1.5 t^3 - 2.5 t^2 + 1 = 0.8671875, k(0.75) = 0.2265625; renormalised.
  w = augment.bicubic_weights(2, 4)
  k1, k2 = 0.8671875, 0.2265625
  np.testing.assert_allclose(w[1], [k1 / (k1 + k2), k2 / (k1 + k2)], rtol=1e-6)
  np.testing.assert_allclose(w[2], w[1][::-1], rtol=1e-6)  # mirror symmetry
  np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(augment.bicubic_weights(5, 5), np.eye(5, dtype=np.float32))


def _draws(n, area, aspect, top, left, erase):
  """Draws of ``n`` attempts: per-attempt lists (padded with the last value) + erase."""
  pad = lambda v: list(v) + [v[-1]] * (n - len(v))
  return jnp.asarray(pad(area) + pad(aspect) + pad(top) + pad(left) + [erase], jnp.float32)


def test_erase_rectangle_for_given_draws():
  p = augment.AugmentParams()
  # Attempt 0: area (0.02 + 0.38 * 0.5) * 100 * 50 = 1050, aspect 0.3 + (1/0.3 - 0.3) * 0.5
  # = 1.81667: h = round(sqrt(1907.5)) = 44, w = round(sqrt(577.98)) = 24;
  # top = floor(0.25 * 57) = 14, left = floor(0.5 * 27) = 13.
  u = _draws(10, [0.5], [0.5], [0.25], [0.5], 0.1)
  top, left, h, w, erase = (int(v) for v in augment.erase_rectangle(u, 100, 50, p))
  assert (top, left, h, w, erase) == (14, 13, 44, 24, 1)
  mask = np.asarray(augment.erase_mask(u, 100, 50, p))
  want = np.zeros((100, 50), bool)
  want[14:58, 13:37] = True
  np.testing.assert_array_equal(mask, want)
  # 20 x 20: attempt 0 (area 160, aspect 10/3: h = 23) does not fit; attempt 1 does:
  # area (0.02 + 0.38 * 0.25) * 400 = 46, aspect 1.81667: h = round(9.14) = 9,
  # w = round(5.03) = 5; top = floor(0.9 * 12) = 10, left = floor(0.1 * 16) = 1.
  u = _draws(10, [1.0, 0.25], [1.0, 0.5], [0.0, 0.9], [0.0, 0.1], 0.4)
  assert tuple(int(v) for v in augment.erase_rectangle(u, 20, 20, p)) == (10, 1, 9, 5, 1)
  # Not erased: the coin says no (u[4n] >= p), or no attempt fits.
  u = _draws(10, [0.5], [0.5], [0.25], [0.5], 0.5)
  assert not np.asarray(augment.erase_mask(u, 100, 50, p)).any()
  u = _draws(10, [1.0], [1.0], [0.0], [0.0], 0.0)
  assert not np.asarray(augment.erase_mask(u, 20, 20, p)).any()


def _zhong(rng: random.Random, H: int, W: int, p: augment.AugmentParams):
  """Zhong et al.'s RandomErasing (the reference code's loop), rectangle or None."""
  if rng.uniform(0, 1) > p.erase_probability:
    return None
  for _ in range(p.erase_attempts):
    area = H * W * rng.uniform(*p.erase_area)
    aspect = rng.uniform(p.erase_min_aspect, 1 / p.erase_min_aspect)
    h, w = int(round((area * aspect) ** 0.5)), int(round((area / aspect) ** 0.5))
    if w < W and h < H:
      return rng.randint(0, H - h), rng.randint(0, W - w), h, w
  return None


def test_erasing_law_matches_the_reference_statistically():
  p, H, W, n = augment.AugmentParams(), 48, 24, 4000
  draws = augment.draw(7, jnp.int32(3), n, p)
  top, left, h, w, erase = (np.asarray(v) for v in
                            jax.vmap(lambda u: augment.erase_rectangle(u, H, W, p))(draws[:, 1:]))
  rng = random.Random(0)
  ref = [r for r in (_zhong(rng, H, W, p) for _ in range(n)) if r is not None]
  # Probability: 4000 fair coins (every draw fits within 10 attempts here): 5 sigma.
  assert abs(erase.mean() - 0.5) < 5 * 0.5 / np.sqrt(n)
  e = erase.astype(bool)
  top, left, h, w = top[e], left[e], h[e], w[e]
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
  rh, rw = np.array([r[2] for r in ref]), np.array([r[3] for r in ref])
  rtop = np.array([r[0] for r in ref])
  # Area fraction, aspect and position have the reference's distributions (two-sample KS).
  for ours, theirs in ((h * w / (H * W), rh * rw / (H * W)), (h / w, rh / rw), (top, rtop)):
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3
  assert 0.02 * H * W * 0.8 <= (h * w).min() and (h * w).max() <= 0.4 * H * W * 1.2


def test_flip_and_erasing_in_the_training_input():
  images = jnp.asarray(np.random.default_rng(2).integers(0, 256, (2, 16, 8, 3)), jnp.uint8)
  plain = np.asarray(augment.to_model_input(images, (32, 16)))
  p = augment.AugmentParams(erase_probability=0.0)
  draws = jnp.zeros((2, p.num_draws)).at[:, 0].set(jnp.array([0.2, 0.7]))
  out = np.asarray(augment.train_input(images, draws, (32, 16), p))
  np.testing.assert_array_equal(out[0], plain[0][:, ::-1])  # draw < 1/2: flipped
  np.testing.assert_array_equal(out[1], plain[1])
  no_flip = augment.AugmentParams(flip=False, erase_probability=0.0)
  np.testing.assert_array_equal(np.asarray(augment.train_input(images, draws, (32, 16), no_flip)),
                                plain)
  # Erasing zeroes exactly its rectangle (after normalisation), in the compute dtype.
  p = augment.AugmentParams(flip=False)
  draws = jnp.stack([jnp.concatenate([jnp.zeros(1), _draws(10, [0.5], [0.5], [0.25], [0.5], 0.1)])
                     ] * 2)
  out = augment.train_input(images, draws, (32, 16), p, jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  mask = np.asarray(augment.erase_mask(draws[0, 1:], 32, 16, p))
  out = np.asarray(out, np.float32)
  assert (out[:, mask] == 0).all() and mask.sum() > 0
  np.testing.assert_allclose(out[:, ~mask], plain[:, ~mask], atol=2e-2)


def test_pad_and_crop_comes_between_flip_and_erasing():
  # The strong baseline's order: flip, pad-and-crop, then erasing, so the erased
  # rectangle sits where its draws put it in the cropped image (not shifted with it).
  images = jnp.asarray(np.random.default_rng(3).integers(0, 256, (2, 16, 8, 3)), jnp.uint8)
  plain = np.asarray(augment.to_model_input(images, (32, 16)))
  p = augment.AugmentParams()
  draws = jnp.stack([jnp.concatenate([jnp.array([0.2]),  # flipped
                                      _draws(10, [0.5], [0.5], [0.25], [0.5], 0.1)])] * 2)
  offsets = jnp.array([[0, 0], [4, 4]])  # pad 2: shift down-right by 2; shift up-left by 2
  out = np.asarray(augment.train_input(images, draws, (32, 16), p, crop_offsets=offsets,
                                       crop_pad=2))
  flipped = plain[:, :, ::-1]
  want = np.array(augment.pad_and_crop(jnp.asarray(flipped), offsets, 2))
  mask = np.asarray(augment.erase_mask(draws[0, 1:], 32, 16, p))
  assert mask.sum() > 0
  want[:, mask] = 0.0
  np.testing.assert_array_equal(out, want)
  assert (out[0, :2] == 0).all() and (out[0, 2:, 2:][~mask[2:, 2:]] != 0).any()


def test_draws_depend_on_seed_step_and_global_position_only():
  p = augment.AugmentParams()
  a = np.asarray(augment.draw(0, jnp.int32(5), 8, p))
  # Position i's draws do not depend on the batch size (a 2-way split sees the same rows).
  np.testing.assert_array_equal(np.asarray(augment.draw(0, jnp.int32(5), 4, p)), a[:4])
  np.testing.assert_array_equal(np.asarray(jax.jit(augment.draw, static_argnums=(0, 2, 3))(
      0, jnp.int32(5), 8, p)), a)
  assert not np.array_equal(np.asarray(augment.draw(0, jnp.int32(6), 8, p)), a)
  assert not np.array_equal(np.asarray(augment.draw(1, jnp.int32(5), 8, p)), a)
  assert a.shape == (8, 42) and (a >= 0).all() and (a < 1).all()
  # About half the images flip.
  flips = np.asarray(augment.draw(0, jnp.int32(0), 4000, p))[:, 0] < 0.5
  assert abs(flips.mean() - 0.5) < 5 * 0.5 / np.sqrt(4000)
