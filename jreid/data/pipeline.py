"""Input pipelines: per-process shards in, uint8 batches at the transfer size out.

The host decodes and sends; the accelerator resizes, augments and normalises
(``jreid.augment``, inside the jitted step). Every image crosses as uint8 at one
fixed transfer size (Market's native 128 x 64: 24,576 bytes, against 884,736 for
a float32 384 x 192 model input); boxes of another size get a cheap uint8
bilinear resize on the host, once, where they are decoded.

Train: this process's shards of ``train`` (``tfds.split_for_jax_process``) are
decoded once (tf.data, parallel) into uint8 arrays held in host memory (Market's
12,936 train boxes: 318 MB); each step's batch is then a numpy gather. Each
epoch's order is a pure function of (seed, epoch), so the batch of step s is a
pure function of (seed, s) and a run resumed at step s sees exactly the batches
it would have seen. The augmentation draws are made on the device from (seed,
step, position in the global batch), so nothing but pixels and labels crosses.

Eval: every example of a split exactly once across all processes and devices:
``tfds.even_splits`` per process, padded to the same number of batches with
``mask = False`` rows (never dropped).

Only this package imports TensorFlow.
"""

from __future__ import annotations

import math
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jreid import errors
from jreid.data import options

TRANSFER_SIZE = (128, 64)  # Market-1501's box: height, width


def decode(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded image bytes -> uint8 [h, w, 3]: JPEG with the accurate integer IDCT
  (libjpeg's ISLOW, what PIL and so PyTorch pipelines decode with: the same pixels as
  ``PIL.Image.open(...).convert("RGB")``; TensorFlow's default fast IDCT is off by up
  to 5 grey levels), PNG, BMP or GIF (its first frame) as ``tf.io.decode_image``."""
  image = tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
  return tf.ensure_shape(image, [None, None, 3])


def fit_to_transfer_size(image: tf.Tensor, transfer_size: tuple[int, int]) -> tf.Tensor:
  """uint8 [h, w, 3] -> uint8 [H, W, 3]: unchanged when already H x W, else bilinear
  (antialiased when shrinking), rounded to the nearest level."""
  H, W = transfer_size
  shape = tf.shape(image)

  def resize():
    out = tf.image.resize(tf.cast(image, tf.float32), (H, W), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

  same = tf.logical_and(tf.equal(shape[0], H), tf.equal(shape[1], W))
  return tf.ensure_shape(tf.cond(same, lambda: image, resize), [H, W, 3])


def decode_images(encoded: np.ndarray, transfer_size: tuple[int, int] = TRANSFER_SIZE,
                  names: np.ndarray | None = None) -> np.ndarray:
  """JPEG bytes [N] -> uint8 [N, H, W, 3] at the transfer size (tf.data, in parallel).

  ``names`` (the file names) only make a decoding error name its image.
  """
  H, W = transfer_size
  if len(encoded) == 0:
    return np.zeros((0, H, W, 3), np.uint8)
  ds = tf.data.Dataset.from_tensor_slices(encoded).map(
      lambda e: fit_to_transfer_size(decode(e), transfer_size),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  out = np.empty((len(encoded), H, W, 3), np.uint8)
  done = 0
  try:
    for batch in ds.batch(1024).as_numpy_iterator():
      out[done:done + len(batch)] = batch
      done += len(batch)
  except tf.errors.OpError:
    found = first_undecodable(encoded[done:], lambda e: decode(tf.constant(e)))
    if found is None:
      raise
    i, message = done + found[0], found[1]
    name = names[i] if names is not None else None
    name = name.decode() if isinstance(name, bytes) else name
    raise ValueError(f"cannot decode image {str(name)!r} (row {i}): expected a JPEG "
                     f"({message})") from None
  return out


def first_undecodable(items, decode_one) -> tuple[int, str] | None:
  """After a tf.data decoding error: the position of the first of ``items`` that
  ``decode_one`` cannot decode, with TensorFlow's message, else None."""
  for i, item in enumerate(items):
    try:
      decode_one(item)
    except tf.errors.OpError as bad:
      return i, bad.message.splitlines()[0]
  return None


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


def identity_pass(labels: np.ndarray, rng: np.random.Generator, ids_per_batch: int,
                  images_per_id: int) -> np.ndarray:
  """One pass of P x K batches over every image, as the strong baseline's sampler.

  Luo et al.'s ``RandomIdentitySampler`` (reid-strong-baseline,
  ``data/samplers/triplet_sampler.py``): each identity's images are shuffled and cut
  into chunks of K (an identity with fewer than K images is drawn up to K with
  replacement; a remainder of fewer than K is left out of this pass); then, while
  at least P identities have chunks left, P of them are drawn at random (without
  replacement) and each gives its next chunk. So every image is visited about once
  per pass and an identity appears in proportion to its images.

  Returns:
    int64 [n * P * K] positions in ``labels``: n whole batches, P ids x K images
    each, the K images of an id adjacent.
  """
  P, K = ids_per_batch, images_per_id
  chunks = {}
  by_label = np.argsort(labels, kind="stable")
  ids, starts = np.unique(labels[by_label], return_index=True)
  for i, pool in zip(ids.tolist(), np.split(by_label, starts[1:])):
    if len(pool) < K:
      pool = rng.choice(pool, K, replace=True)
    pool = rng.permutation(pool)
    chunks[i] = [pool[j * K:(j + 1) * K] for j in range(len(pool) // K)]
  available = sorted(chunks)
  order = []
  while len(available) >= P:
    for i in rng.choice(available, P, replace=False).tolist():
      order.append(chunks[i].pop(0))
      if not chunks[i]:
        available.remove(i)
  return np.concatenate(order).astype(np.int64) if order else np.zeros(0, np.int64)


PK_EPOCHS = options.PK_EPOCHS
SAMPLERS = options.SAMPLERS
PASS_DRAWS = 8  # identity passes averaged by pass_batches


def pass_batches(labels: np.ndarray, ids_per_batch: int, images_per_id: int) -> int:
  """Whole P x K batches in one identity pass, as a fixed number: the mean over
  ``PASS_DRAWS`` passes drawn with a fixed generator, rounded down.

  A pass's length varies with its draws (on Market-1501's 12,936 train images, 16 x 4:
  182 to 184 batches; reid-strong-baseline's epoch is one pass), while a schedule needs
  a fixed number of steps per epoch. A pure function of the labels.
  """
  rng = np.random.default_rng(0)
  lengths = [len(identity_pass(labels, rng, ids_per_batch, images_per_id))
             for _ in range(PASS_DRAWS)]
  return int(np.mean(lengths) // (ids_per_batch * images_per_id))


def epoch_order(labels: np.ndarray, seed: int, epoch: int, sampler: str = "random",
                ids_per_batch: int = 8, images_per_id: int = 4, batch_size: int = 0,
                num_batches: int = 0) -> np.ndarray:
  """Positions of one epoch, a pure function of (seed, epoch).

  sampler "random": a permutation. "pk": batches of P ids x K images from
  ``identity_pass`` (the strong baseline's sampler), passes following one another
  until the epoch has ``num_batches`` whole batches (0: as many as the random one,
  len(labels) // (P x K), so both samplers train the same number of steps per epoch).
  """
  rng = np.random.default_rng([seed, epoch])
  if sampler == "random":
    return rng.permutation(len(labels))
  if sampler != "pk":
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
  P, K = ids_per_batch, images_per_id
  if batch_size and batch_size != P * K:
    raise ValueError(f"pk sampling needs batch = ids_per_batch x images_per_id = {P * K}, "
                     f"got {batch_size}")
  num_ids = len(np.unique(labels))
  if num_ids < P:
    raise ValueError(f"pk sampling needs at least ids_per_batch = {P} identities, got "
                     f"{num_ids}")
  wanted = (num_batches or len(labels) // (P * K)) * P * K
  passes, total = [], 0
  while total < wanted:
    passes.append(identity_pass(labels, rng, P, K))
    total += len(passes[-1])
  return np.concatenate(passes)[:wanted] if passes else np.zeros(0, np.int64)


class TrainData:
  """This process's share of every global training batch, as uint8 at the transfer size.

  The train split is cut into ``num_shards`` even shards
  (``tfds.split_for_jax_process(..., process_index=shard, process_count=num_shards)``);
  each shard has its own epoch order and contributes global_batch / num_shards
  images to every step, and each process reads the shards it owns. An epoch is
  as many steps as the smallest shard has whole batches of images, or, with
  ``sampler="pk"`` and ``pk_epoch="identity_pass"``, as many as one identity pass
  of it yields (``pass_batches``; reid-strong-baseline's epoch). By default
  num_shards is the number of processes (one shard each); fixing it makes the
  global batches independent of how many processes read them, so 1 process with
  2 devices and 2 processes with 1 device each train on the same data.

  Attributes:
    local_batch: images per process per step.
    steps_per_epoch: the same on every process.
    num_classes: identities of the train split.
    num_images: train images of this process's shards.
    shards, num_shards: the shards this process reads, out of how many.
    transfer_size: (height, width) of the uint8 images of every batch.
    images: shard -> uint8 [n, H, W, 3], the decoded shard (held in memory).
    identities: int64 [num_classes], the sorted person ids of the whole train split.
    labels: shard -> int32 [n], position of each image's identity in ``identities``.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, global_batch: int,
               transfer_size: tuple[int, int] = TRANSFER_SIZE, seed: int = 0,
               sampler: str = "random", ids_per_batch: int = 8, images_per_id: int = 4,
               num_shards: int = 0, pk_epoch: str = "images"):
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
    self.transfer_size = tuple(transfer_size)
    self.seed, self.sampler = seed, sampler
    self.ids_per_batch, self.images_per_id = ids_per_batch, images_per_id
    if pk_epoch not in PK_EPOCHS:
      raise ValueError(f"pk_epoch must be one of {PK_EPOCHS}, got {pk_epoch!r}")
    if sampler == "pk" and self.shard_batch != ids_per_batch * images_per_id:
      raise ValueError(f"pk sampling needs a per-shard batch of ids_per_batch x images_per_id "
                       f"= {ids_per_batch * images_per_id}, got {self.shard_batch}")
    self.identities = identity_labels(builder)
    self.num_classes = len(self.identities)
    self.images, self.labels = {}, {}
    for shard in self.shards:
      split = tfds.split_for_jax_process("train", process_index=shard,
                                         process_count=self.num_shards, drop_remainder=True)
      records = read_records(builder, split)
      self.images[shard] = decode_images(records["image"], self.transfer_size,
                                         records["filename"])
      self.labels[shard] = np.searchsorted(self.identities, records["id"]).astype(np.int32)
      ids_here = len(np.unique(self.labels[shard]))
      if sampler == "pk" and ids_here < ids_per_batch:
        raise errors.InputError(
            f"train shard {shard} of {self.num_shards} holds {ids_here} identities; pk "
            f"sampling needs at least data.ids_per_batch = {ids_per_batch}")
    self.num_images = sum(len(v) for v in self.labels.values())
    self.steps_per_epoch = min(len(v) for v in self.labels.values()) // self.shard_batch
    if sampler == "pk" and pk_epoch == "identity_pass":
      steps = min(pass_batches(v, ids_per_batch, images_per_id) for v in self.labels.values())
      if processes > 1:  # shards differ: every process takes the smallest
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        steps = int(np.min(multihost_utils.process_allgather(np.int64(steps))))
      self.steps_per_epoch = steps
    if self.steps_per_epoch == 0:
      smallest = min(len(v) for v in self.labels.values())
      raise errors.InputError(
          f"a train shard holds {smallest} images, fewer than one shard batch of "
          f"{self.shard_batch} (train.batch_size {global_batch} over {self.num_shards} shards): "
          f"expected train.batch_size at most {smallest * self.num_shards}, or fewer "
          f"data.shards")
    self._orders = {}

  def _order(self, shard: int, epoch: int) -> np.ndarray:
    """Rows of ``shard`` in epoch order, steps_per_epoch x shard_batch of them."""
    if (shard, epoch) not in self._orders:
      b = self.shard_batch
      # One order stream per shard: 7919 (a prime larger than any shard count) keeps the
      # (seed, shard) pairs apart, so two seeds never share a shard's order.
      order = epoch_order(self.labels[shard], self.seed * 7919 + shard, epoch, self.sampler,
                          self.ids_per_batch, self.images_per_id,
                          b if self.sampler == "pk" else 0, self.steps_per_epoch)
      self._orders = {k: v for k, v in self._orders.items() if k[1] == epoch}
      self._orders[shard, epoch] = order[:self.steps_per_epoch * b]
    return self._orders[shard, epoch]

  def rows(self, step: int) -> dict[int, np.ndarray]:
    """shard -> int64 [shard_batch]: the rows of each of this process's shards at ``step``."""
    epoch, k = divmod(step, self.steps_per_epoch)
    b = self.shard_batch
    return {s: self._order(s, epoch)[k * b:(k + 1) * b] for s in self.shards}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The local batch of ``step``: {"image": uint8 [local_batch, H, W, 3], "label": int32
    [local_batch]}, shards in order. A pure function of (seed, step)."""
    rows = self.rows(step)
    return {"image": np.concatenate([self.images[s][rows[s]] for s in self.shards]),
            "label": np.concatenate([self.labels[s][rows[s]] for s in self.shards])}

  def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """``batch(s)`` for s = start_step, start_step + 1, ... (endless)."""
    step = start_step
    while True:
      yield self.batch(step)
      step += 1


def eval_batches(builder: tfds.core.DatasetBuilder, split: str, global_batch: int,
                 transfer_size: tuple[int, int] = TRANSFER_SIZE
                 ) -> tuple[Iterator[dict[str, np.ndarray]], int]:
  """Local eval batches covering every example of ``split`` exactly once overall.

  Returns:
    (iterator, number of batches; the same on every process). Each batch: "image"
    uint8 [b, H, W, 3] at ``transfer_size``, "id" int64 [b], "camera" int64 [b]
    0-based (TFDS stores Market's 1-based camera; converted here), "time" int64 [b],
    "index" int64 [b] (position in the split), "mask" bool [b] (False on padding).
  """
  n, me = jax.process_count(), jax.process_index()
  if global_batch % n:
    raise ValueError(f"eval batch {global_batch} must divide over {n} processes")
  local = global_batch // n
  parts = tfds.even_splits(split, n, drop_remainder=False)
  sizes = [builder.info.splits[p].num_examples for p in parts]
  num_batches = max(1, math.ceil(max(sizes) / local))
  offset = sum(sizes[:me])
  ds = builder.as_dataset(split=parts[me], shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.enumerate().map(lambda i, ex: {
      "image": fit_to_transfer_size(decode(ex["image"]), transfer_size),
      "id": ex["id"], "camera": ex["camera"] - 1, "time": ex["time"], "index": i + offset,
      "mask": True}, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  H, W = transfer_size
  pad = tf.data.Dataset.from_tensors({
      "image": tf.zeros([H, W, 3], tf.uint8), "id": tf.constant(-1, tf.int64),
      "camera": tf.constant(0, tf.int64), "time": tf.constant(0, tf.int64),
      "index": tf.constant(-1, tf.int64), "mask": False}).repeat()
  ds = ds.concatenate(pad).take(num_batches * local).batch(local).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator(), num_batches
