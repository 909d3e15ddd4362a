"""Benchmark: training images/s of the host input pipeline, and bytes sent per image.

  python benchmarks/input_pipeline.py [--batch=32] [--steps=400] [--image_size=384,192]

Generates a synthetic Market-format world at the real 128x64 box size, prepares it
with the market1501 TFDS builder, then times, after a warm-up:

* jreid: everything the host still does per step: ``TrainData.batch`` (a gather
  from the uint8 boxes decoded once) and ``sharding.to_global`` (the copy to the
  device, waited for). The one-off start-up (reading and decoding the split) and
  the decode alone are timed on their own.
* baseline, in the same run: the host pipeline jreid had before (tf.data decode,
  float32 bicubic resize to --image_size, flip, ImageNet normalisation and random
  erasing per image, in parallel maps), copied here.

Prints images/s in total and per CPU core (total / cores: the gather is one
thread, so this is conservative), bytes per image, and the ratios.
"""

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jreid import sharding  # pylint: disable=g-import-not-at-top
from jreid.data import market1501  # pylint: disable=g-import-not-at-top
from jreid.data import pipeline  # pylint: disable=g-import-not-at-top
from jreid.data import synthetic  # pylint: disable=g-import-not-at-top

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _old_train_preprocess(encoded, seed, image_size):
  """The host augmentation jreid had before (decode, resize, flip, normalise, erase)."""
  image = tf.image.resize(tf.cast(tf.io.decode_jpeg(encoded, channels=3), tf.float32),
                          image_size, method="bicubic")
  image = tf.clip_by_value(image, 0.0, 255.0) / 255.0
  flip = tf.random.stateless_uniform([], seed=seed + tf.constant([0, 1], seed.dtype)) < 0.5
  image = tf.where(flip, tf.image.flip_left_right(image), image)
  image = (image - tf.constant(MEAN)) / tf.constant(STD)
  H, W, n = image_size[0], image_size[1], 10
  u = tf.random.stateless_uniform([4 * n + 1], seed=seed + tf.constant([0, 2], seed.dtype))
  area = (0.02 + 0.38 * u[:n]) * H * W
  aspect = 0.3 + (1.0 / 0.3 - 0.3) * u[n:2 * n]
  h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (h < H) & (w < W)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  h, w = h[first], w[first]
  top = tf.cast(tf.floor(u[2 * n + first] * tf.cast(H - h + 1, tf.float32)), tf.int32)
  left = tf.cast(tf.floor(u[3 * n + first] * tf.cast(W - w + 1, tf.float32)), tf.int32)
  do = tf.reduce_any(fits) & (u[4 * n] < 0.5)
  rows, cols = tf.range(H)[:, None], tf.range(W)[None, :]
  inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & do
  return tf.where(inside[:, :, None], tf.zeros_like(image), image)


def _old_batches(encoded, labels, batch, image_size):
  n = len(labels)
  ds = tf.data.Dataset.from_tensor_slices({
      "encoded": encoded, "label": labels,
      "seed": np.stack([np.zeros(n, np.int64), np.arange(n, dtype=np.int64) * 4], axis=1)})
  ds = ds.repeat().map(lambda ex: {"image": _old_train_preprocess(ex["encoded"], ex["seed"],
                                                                  image_size),
                                   "label": ex["label"]},
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _time(batches, steps, put):
  """images/s and bytes/image of ``steps`` batches, each sent to the device."""
  for _ in range(5):
    jax.block_until_ready(put(next(batches)))
  start, nbytes, images = time.perf_counter(), 0, 0
  for _ in range(steps):
    b = next(batches)
    jax.block_until_ready(put(b))
    nbytes += sum(v.nbytes for v in b.values())
    images += len(b["label"])
  return images / (time.perf_counter() - start), b["image"].nbytes / len(b["label"]), \
      nbytes / images


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--image_size", default="384,192", help="the baseline's host resize")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--baseline_steps", type=int, default=30)
  parser.add_argument("--ids", type=int, default=120)
  args = parser.parse_args()
  size = tuple(int(x) for x in args.image_size.split(","))
  cores = os.cpu_count() or 1
  mesh = sharding.make_mesh()
  put = lambda b: sharding.to_global(b, sharding.data_sharding(mesh))
  with tempfile.TemporaryDirectory() as tmp:
    synthetic.generate(tmp, synthetic.WorldParams(num_train_ids=args.ids, num_test_ids=10,
                                                  num_junk=2, num_distractors=2))
    builder = market1501.prepare(os.path.join(tmp, "tfds"), tmp)
    start = time.perf_counter()
    data = pipeline.TrainData(builder, args.batch, pipeline.TRANSFER_SIZE, seed=0)
    decode_s = time.perf_counter() - start
    rate, image_bytes, all_bytes = _time(data.batches(0), args.steps, put)
    raw = pipeline.read_records(builder, "train")
    start = time.perf_counter()
    pipeline.decode_images(raw["image"], pipeline.TRANSFER_SIZE)
    decode_only = len(raw["image"]) / (time.perf_counter() - start)
    labels = np.searchsorted(data.identities, raw["id"]).astype(np.int32)
    old_rate, old_image_bytes, old_bytes = _time(_old_batches(raw["image"], labels, args.batch,
                                                              size), args.baseline_steps, put)
  h, w = pipeline.TRANSFER_SIZE
  print(f"host input pipeline, batch {args.batch}, {cores} CPU cores "
        f"({jax.devices()[0].platform} device):")
  print(f"  jreid (uint8 {h}x{w}, augmentation on the device): {rate:,.0f} images/s "
        f"({rate / cores:,.0f} per core); {image_bytes:,.0f} image bytes + "
        f"{all_bytes - image_bytes:,.0f} label bytes per image")
  print(f"  once at start-up: TrainData with {data.num_images} images in {decode_s:.1f} s "
        f"(TFDS reading and decoding); the JPEG decode alone {decode_only:,.0f} images/s "
        f"({decode_only / cores:,.0f} per core)")
  print(f"  baseline (float32 {size[0]}x{size[1]}, augmentation on the host): "
        f"{old_rate:,.0f} images/s ({old_rate / cores:,.0f} per core); "
        f"{old_image_bytes:,.0f} image bytes per image")
  print(f"  ratio: {rate / old_rate:.1f}x the images/s, {old_bytes / all_bytes:.1f}x fewer "
        f"bytes to the device")


if __name__ == "__main__":
  main()
