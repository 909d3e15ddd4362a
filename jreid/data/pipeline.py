"""tf.data input pipelines: per-process shards in, global sharded jax.Arrays out.

Train: this process's shard of ``train`` (``tfds.split_for_jax_process``) is held
encoded in memory (Market-1501's 12,936 JPEGs are ~65 MB); each epoch's order is a
pure function of (seed, epoch), and every augmentation draws from stateless
random ops keyed by (seed, epoch, position), so a run resumed at step s sees
exactly the batches it would have seen. Decode, bicubic resize, horizontal flip,
ImageNet normalisation and random erasing (Zhong et al., the reference's
parameters) run in parallel tf.data maps.

Eval: every example of a split exactly once across all processes and devices:
``tfds.even_splits`` per process, padded to the same number of batches with
``mask = False`` rows (never dropped).

Only this package imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Training augmentation (reference: flip, random erasing p 0.5, area 0.02-0.4, aspect from 0.3)."""
  flip: bool = True
  erase_probability: float = 0.5
  erase_area: tuple[float, float] = (0.02, 0.4)
  erase_min_aspect: float = 0.3
  erase_attempts: int = 10


def _resize(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
  """uint8 [h, w, 3] -> float32 [H, W, 3] in [0, 1], bicubic resize (as the reference)."""
  image = tf.image.resize(tf.cast(image, tf.float32), image_size, method="bicubic")
  return tf.clip_by_value(image, 0.0, 255.0) / 255.0


def _decode_resize(encoded: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
  return _resize(tf.io.decode_jpeg(encoded, channels=3), image_size)


def _normalise(image: tf.Tensor) -> tf.Tensor:
  return (image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def random_erasing(image: tf.Tensor, seed: tf.Tensor, params: AugmentParams) -> tf.Tensor:
  """Zhong et al.'s random erasing with fill 0, from stateless randomness.

  With probability p, up to ``erase_attempts`` rectangles (area fraction in
  ``erase_area``, aspect in [r, 1/r]) are drawn; the first that fits is zeroed.
  """
  H, W = image.shape[0], image.shape[1]
  n = params.erase_attempts
  u = tf.random.stateless_uniform([4 * n + 1], seed=seed)
  area = (params.erase_area[0] + (params.erase_area[1] - params.erase_area[0]) * u[:n]) * H * W
  r = params.erase_min_aspect
  aspect = r + (1.0 / r - r) * u[n:2 * n]
  h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (h < H) & (w < W)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  h, w = h[first], w[first]
  top = tf.cast(tf.floor(u[2 * n + first] * tf.cast(H - h + 1, tf.float32)), tf.int32)
  left = tf.cast(tf.floor(u[3 * n + first] * tf.cast(W - w + 1, tf.float32)), tf.int32)
  do = tf.reduce_any(fits) & (u[4 * n] < params.erase_probability)
  rows = tf.range(H)[:, None]
  cols = tf.range(W)[None, :]
  inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & do
  return tf.where(inside[:, :, None], tf.zeros_like(image), image)


def train_preprocess(encoded: tf.Tensor, seed: tf.Tensor, image_size: tuple[int, int],
                     params: AugmentParams) -> tf.Tensor:
  """One training image: decode, resize, flip, normalise, erase. seed: int32 [2]."""
  image = _decode_resize(encoded, image_size)
  if params.flip:
    flip = tf.random.stateless_uniform([], seed=seed + tf.constant([0, 1], seed.dtype)) < 0.5
    image = tf.where(flip, tf.image.flip_left_right(image), image)
  image = _normalise(image)
  if params.erase_probability > 0:
    image = random_erasing(image, seed + tf.constant([0, 2], seed.dtype), params)
  return image


def read_records(builder: tfds.core.DatasetBuilder, split) -> dict[str, np.ndarray]:
  """All examples of ``split`` with the image left encoded: a dict of numpy arrays."""
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  out = {k: [] for k in ("image", "id", "camera", "sequence", "frame", "time", "filename")}
  for ex in ds.batch(4096).as_numpy_iterator():
    for k in out:
      out[k].append(ex[k])
  return {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in out.items()}


def identity_labels(builder: tfds.core.DatasetBuilder) -> np.ndarray:
  """Sorted identities of the whole train split; an id's label is its position."""
  ds = builder.as_dataset(split="train", shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  ids = [b["id"] for b in ds.map(lambda ex: {"id": ex["id"]}).batch(8192).as_numpy_iterator()]
  return np.unique(np.concatenate(ids))


def epoch_order(labels: np.ndarray, seed: int, epoch: int, sampler: str = "random",
                ids_per_batch: int = 8, images_per_id: int = 4, batch_size: int = 0
                ) -> np.ndarray:
  """Positions of one epoch, a pure function of (seed, epoch).

  sampler "random": a permutation. "pk": batches of P ids x K images (sampled with
  replacement where an id has fewer than K), ids in random order; the epoch has as
  many whole batches as the random one.
  """
  rng = np.random.default_rng([seed, epoch])
  if sampler == "random":
    return rng.permutation(len(labels))
  if sampler != "pk":
    raise ValueError(f"sampler must be 'random' or 'pk', got {sampler!r}")
  P, K = ids_per_batch, images_per_id
  if batch_size and batch_size != P * K:
    raise ValueError(f"pk sampling needs batch = ids_per_batch x images_per_id = {P * K}, "
                     f"got {batch_size}")
  by_id = {}
  for pos, lab in enumerate(labels):
    by_id.setdefault(int(lab), []).append(pos)
  ids = np.array(sorted(by_id))
  num_batches = len(labels) // (P * K)
  order = []
  while len(order) < num_batches * P * K:
    for i in rng.permutation(ids):
      pool = by_id[int(i)]
      order.extend(rng.choice(pool, K, replace=len(pool) < K).tolist())
  return np.asarray(order[:num_batches * P * K])


class TrainData:
  """This process's share of every global training batch.

  The train split is cut into ``num_shards`` even shards
  (``tfds.split_for_jax_process(..., process_index=shard, process_count=num_shards)``);
  each shard has its own epoch order and contributes global_batch / num_shards
  images to every step, and each process reads the shards it owns. By default
  num_shards is the number of processes (one shard each); fixing it makes the
  global batches independent of how many processes read them, so 1 process with
  2 devices and 2 processes with 1 device each train on the same data.

  Attributes:
    local_batch: images per process per step.
    steps_per_epoch: the same on every process.
    num_classes: identities of the train split.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, global_batch: int,
               image_size: tuple[int, int], seed: int = 0,
               augment: AugmentParams = AugmentParams(), sampler: str = "random",
               ids_per_batch: int = 8, images_per_id: int = 4, num_shards: int = 0):
    processes = jax.process_count()
    self.num_shards = num_shards or processes
    if self.num_shards % processes or global_batch % self.num_shards:
      raise ValueError(f"data shards ({self.num_shards}) must be a multiple of the processes "
                       f"({processes}) and divide the global batch ({global_batch})")
    per_process = self.num_shards // processes
    self.shards = list(range(jax.process_index() * per_process,
                             (jax.process_index() + 1) * per_process))
    self.shard_batch = global_batch // self.num_shards
    self.local_batch = self.shard_batch * per_process
    self.image_size = tuple(image_size)
    self.seed, self.augment, self.sampler = seed, augment, sampler
    self.ids_per_batch, self.images_per_id = ids_per_batch, images_per_id
    if sampler == "pk" and self.shard_batch != ids_per_batch * images_per_id:
      raise ValueError(f"pk sampling needs a per-shard batch of ids_per_batch x images_per_id "
                       f"= {ids_per_batch * images_per_id}, got {self.shard_batch}")
    self.identities = identity_labels(builder)
    self.num_classes = len(self.identities)
    self.records, self.labels = {}, {}
    for shard in self.shards:
      split = tfds.split_for_jax_process("train", process_index=shard,
                                         process_count=self.num_shards, drop_remainder=True)
      self.records[shard] = read_records(builder, split)
      self.labels[shard] = np.searchsorted(self.identities,
                                           self.records[shard]["id"]).astype(np.int32)
    self.num_images = sum(len(v) for v in self.labels.values())
    self.steps_per_epoch = min(len(v) for v in self.labels.values()) // self.shard_batch
    if self.steps_per_epoch == 0:
      raise ValueError(f"a train shard has fewer images than one shard batch "
                       f"({self.shard_batch})")

  def _shard_dataset(self, shard: int, epoch: int, first_step: int) -> tf.data.Dataset:
    labels, b = self.labels[shard], self.shard_batch
    shard_seed = self.seed * 7919 + shard
    order = epoch_order(labels, shard_seed, epoch, self.sampler,
                        self.ids_per_batch, self.images_per_id,
                        b if self.sampler == "pk" else 0)
    order = order[:self.steps_per_epoch * b]
    slot = np.arange(len(order), dtype=np.int64) + epoch * len(order)
    order, slot = order[first_step * b:], slot[first_step * b:]
    ds = tf.data.Dataset.from_tensor_slices({
        "encoded": self.records[shard]["image"][order], "label": labels[order],
        "seed": np.stack([np.full_like(slot, shard_seed), slot * 4], axis=1)})
    size, augment = self.image_size, self.augment
    ds = ds.map(lambda ex: {"image": train_preprocess(ex["encoded"], ex["seed"], size, augment),
                            "label": ex["label"]},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(b, drop_remainder=True)

  def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Local batches {"image": float32 [b, H, W, 3], "label": int32 [b]} from start_step on."""
    epoch, step = divmod(start_step, self.steps_per_epoch)
    while True:
      parts = [self._shard_dataset(s, epoch, step) for s in self.shards]
      ds = parts[0] if len(parts) == 1 else tf.data.Dataset.zip(tuple(parts)).map(
          lambda *bs: {k: tf.concat([b[k] for b in bs], axis=0) for k in bs[0]})
      yield from ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
      epoch, step = epoch + 1, 0


def eval_batches(builder: tfds.core.DatasetBuilder, split: str, global_batch: int,
                 image_size: tuple[int, int]) -> tuple[Iterator[dict[str, np.ndarray]], int]:
  """Local eval batches covering every example of ``split`` exactly once overall.

  Returns:
    (iterator, number of batches; the same on every process). Each batch: "image"
    float32 [b, H, W, 3], "id", "camera", "time" int64 [b], "index" int64 [b]
    (position in the split), "mask" bool [b] (False on padding).
  """
  n, me = jax.process_count(), jax.process_index()
  if global_batch % n:
    raise ValueError(f"eval batch {global_batch} must divide over {n} processes")
  local = global_batch // n
  parts = tfds.even_splits(split, n, drop_remainder=False)
  sizes = [builder.info.splits[p].num_examples for p in parts]
  num_batches = max(1, math.ceil(max(sizes) / local))
  offset = sum(sizes[:me])
  ds = builder.as_dataset(split=parts[me], shuffle_files=False)
  ds = ds.enumerate().map(lambda i, ex: {
      "image": _normalise(_resize(ex["image"], image_size)),
      "id": ex["id"], "camera": ex["camera"], "time": ex["time"], "index": i + offset,
      "mask": True}, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  H, W = image_size
  pad = tf.data.Dataset.from_tensors({
      "image": tf.zeros([H, W, 3]), "id": tf.constant(-1, tf.int64),
      "camera": tf.constant(0, tf.int64), "time": tf.constant(0, tf.int64),
      "index": tf.constant(-1, tf.int64), "mask": False}).repeat()
  ds = ds.concatenate(pad).take(num_batches * local).batch(local).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator(), num_batches


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict:
  """Local numpy batch -> global jax.Arrays sharded over the mesh's data axis."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
