"""TFDS builder, synthetic world and tf.data pipelines on a tiny generated world."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jreid import names
from jreid.data import market1501
from jreid.data import pipeline
from jreid.data import synthetic

from conftest import TINY_WORLD as TINY


def test_world_layout_and_names(world):
  out, m = world
  root = os.path.join(out, synthetic.ROOT_NAME)
  for split, folder in synthetic.FOLDERS.items():
    on_disk = sorted(os.listdir(os.path.join(root, folder)))
    assert on_disk == sorted(n for n, s in zip(m.filenames, m.split) if s == split)
  for name, pid, cam, t in zip(m.filenames, m.person_id, m.camera, m.time):
    p = names.parse_name(name, grammar="market")
    assert (p.person_id, p.camera, p.time) == (pid, cam, t)
  assert len(set(m.filenames)) == len(m.filenames)


def test_world_statistics_match_parameters(world):
  _, m = world
  split = np.array(m.split)
  train_ids = set(m.person_id[split == "train"].tolist())
  test_ids = set(m.person_id[(split == "query")].tolist())
  assert train_ids == set(range(1, TINY.num_train_ids + 1))
  assert test_ids == set(range(TINY.num_train_ids + 1, TINY.num_train_ids + TINY.num_test_ids + 1))
  gallery = split == "gallery"
  assert (m.person_id[gallery] == -1).sum() == TINY.num_junk
  assert (m.person_id[gallery] == 0).sum() == TINY.num_distractors
  assert set(m.camera.tolist()) <= set(range(1, TINY.num_cameras + 1))
  assert m.time.min() >= 0 and m.time.max() < TINY.time_span
  # One query per (test id, camera); each query has a gallery match in another camera.
  q = split == "query"
  pairs = list(zip(m.person_id[q], m.camera[q]))
  assert len(pairs) == len(set(pairs))
  for pid, cam in pairs:
    assert ((m.person_id[gallery] == pid) & (m.camera[gallery] != cam)).any()
  # Transit times: consecutive cameras of a walk are |distance| / speed apart (+ dwell).
  for pid in list(train_ids)[:5]:
    sel = m.person_id == pid
    cams, times = m.camera[sel], m.time[sel]
    firsts = sorted((times[cams == c].min(), c) for c in set(cams.tolist()))
    speed = m.walking_speed[pid]
    for (t0, c0), (t1, c1) in zip(firsts[:-1], firsts[1:]):
      walk = abs(m.camera_position_m[c1 - 1] - m.camera_position_m[c0 - 1]) / speed
      assert walk * 25 - 60 <= t1 - t0 <= (walk + 5 * TINY.dwell_s) * 25 + 60


def test_builder_counts_and_fields(world, builder):
  _, m = world
  split = np.array(m.split)
  for s in ("train", "query", "gallery"):
    assert builder.info.splits[s].num_examples == (split == s).sum()
  records = pipeline.read_records(builder, "query")
  assert sorted(records["filename"].astype(str)) == sorted(
      n for n, s in zip(m.filenames, m.split) if s == "query")
  ex = next(iter(tfds.as_numpy(builder.as_dataset(split="gallery").take(1))))
  name = ex["filename"].decode()
  p = names.parse_name(name)
  assert (ex["id"], ex["camera"], ex["sequence"], ex["frame"], ex["time"]) == (
      p.person_id, p.camera, p.sequence, p.frame, p.time)
  # The stored image is the source JPEG, byte for byte, and decodes to its size.
  path = os.path.join(world[0], synthetic.ROOT_NAME, "bounding_box_test", name)
  with open(path, "rb") as f:
    source = f.read()
  raw = pipeline.read_records(builder, "gallery")
  stored = raw["image"][list(raw["filename"].astype(str)).index(name)]
  assert stored == source
  assert ex["image"].shape == (TINY.image_height, TINY.image_width, 3)


def test_builder_from_zip_only(world, tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  shutil.copy(os.path.join(world[0], synthetic.ROOT_NAME + ".zip"), manual)
  b = market1501.prepare(str(tmp_path / "tfds"), str(manual))
  assert b.info.splits["train"].num_examples == (np.array(world[1].split) == "train").sum()


def test_manual_dir_errors(tmp_path):
  with pytest.raises(market1501.ManualDataMissingError, match="(?s)does not exist.*Market-1501-v15.09.15.zip"):
    market1501.find_root(str(tmp_path / "nope"))
  # Through TFDS too: the builder's error carries the instructions.
  with pytest.raises(market1501.ManualDataMissingError, match="(?s)Market-1501-v15.09.15.zip"):
    market1501.prepare(str(tmp_path / "tfds"), str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(market1501.ManualDataMissingError, match="is empty"):
    market1501.find_root(str(tmp_path / "empty"))


def test_corrupt_jpeg_and_bad_name_stop_preparation(world, tmp_path):
  root = tmp_path / synthetic.ROOT_NAME
  shutil.copytree(os.path.join(world[0], synthetic.ROOT_NAME), root)
  bad = root / "query" / "0013_c1s1_000100_01.jpg"
  bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  with pytest.raises(ValueError, match="0013_c1s1_000100_01.jpg"):
    list(market1501.examples(str(root / "query")))
  bad.unlink()
  (root / "query" / "weird_name.jpg").write_bytes(b"")
  with pytest.raises(names.BadNameError, match="weird_name.jpg"):
    list(market1501.examples(str(root / "query")))


def _decode(jpeg: bytes) -> np.ndarray:
  """The stored JPEG, decoded on its own by PIL (libjpeg's accurate IDCT): the
  pipeline's decoder gives the same pixels (test_jpeg_decoding_equals_pil)."""
  import io  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def test_jpeg_decoding_equals_pil(builder, tmp_path):
  """pipeline.decode: PIL's pixels for JPEGs (TensorFlow's default fast IDCT is not), and
  PNGs as they are."""
  import io  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  encoded = pipeline.read_records(builder, "gallery")["image"][:40]
  fast_differs = 0
  for data in encoded:
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(pipeline.decode(tf.constant(data)).numpy(), want)
    fast_differs += not np.array_equal(tf.io.decode_jpeg(data, channels=3).numpy(), want)
  assert fast_differs > 0  # the default IDCT would not have matched PIL
  rgb = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG")
  np.testing.assert_array_equal(pipeline.decode(tf.constant(buf.getvalue())).numpy(), rgb)


def test_train_batches_are_the_stored_pixels_and_resume(builder):
  data = pipeline.TrainData(builder, global_batch=8, transfer_size=(64, 32), seed=3)
  first = [b for _, b in zip(range(data.steps_per_epoch + 2), data.batches(0))]
  b = first[0]
  assert b["image"].shape == (8, 64, 32, 3) and b["image"].dtype == np.uint8
  assert b["image"].nbytes // 8 == 64 * 32 * 3  # bytes an image crosses with
  assert b["label"].dtype == np.int32 and b["label"].max() < data.num_classes == TINY.num_train_ids
  # Round trip: every batch holds the decoded JPEGs of its rows, and their labels.
  raw = pipeline.read_records(builder, tfds.split_for_jax_process(
      "train", process_index=0, process_count=1, drop_remainder=True))
  for step in (0, data.steps_per_epoch + 1):
    rows = data.rows(step)[0]
    np.testing.assert_array_equal(first[step]["image"],
                                  np.stack([_decode(raw["image"][r]) for r in rows]))
    np.testing.assert_array_equal(data.identities[first[step]["label"]], raw["id"][rows])
  # Each epoch visits distinct rows.
  epoch = np.concatenate([data.rows(s)[0] for s in range(data.steps_per_epoch)])
  assert len(set(epoch.tolist())) == len(epoch)
  # Resuming at any step gives the same batches, across the epoch boundary too.
  resumed = [b for _, b in zip(range(3), data.batches(data.steps_per_epoch - 1))]
  for a, r in zip(first[data.steps_per_epoch - 1:], resumed):
    np.testing.assert_array_equal(a["image"], r["image"])
    np.testing.assert_array_equal(a["label"], r["label"])


def test_boxes_of_another_size_are_resized_on_the_host(builder):
  data = pipeline.TrainData(builder, global_batch=8, transfer_size=(32, 16), seed=3)
  raw = pipeline.read_records(builder, "train")
  rows = data.rows(0)[0]
  got = data.batch(0)["image"]
  assert got.shape == (8, 32, 16, 3) and got.dtype == np.uint8
  # Bilinear, antialiased when shrinking: PIL's BILINEAR within one grey level.
  want = np.stack([np.asarray(Image.fromarray(_decode(raw["image"][r])).resize(
      (16, 32), Image.BILINEAR)) for r in rows])
  assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
  with pytest.raises(ValueError, match="cannot decode image 'broken.jpg'"):
    pipeline.decode_images(np.array([b"not a jpeg"], object), (32, 16), np.array(["broken.jpg"]))


def test_pk_sampler():
  labels = np.repeat(np.arange(6), [5, 1, 3, 4, 2, 6])
  order = pipeline.epoch_order(labels, seed=0, epoch=0, sampler="pk", ids_per_batch=3,
                               images_per_id=2, batch_size=6)
  assert len(order) == (len(labels) // 6) * 6  # as many batches as the random sampler
  for batch in order.reshape(-1, 6):
    lab = labels[batch].reshape(3, 2)
    assert (lab[:, 0] == lab[:, 1]).all() and len(set(lab[:, 0])) == 3
  with pytest.raises(ValueError, match="pk sampling needs batch"):
    pipeline.epoch_order(labels, 0, 0, "pk", 3, 2, batch_size=8)
  with pytest.raises(ValueError, match="at least ids_per_batch = 7 identities, got 6"):
    pipeline.epoch_order(labels, 0, 0, "pk", 7, 1)


@pytest.mark.parametrize("seed", range(5))
def test_identity_pass_covers_each_image_once_as_the_strong_baseline(seed):
  """Luo et al.'s RandomIdentitySampler: chunks of K per id, ids drawn while >= P have chunks."""
  counts = [5, 1, 3, 4, 2, 6, 9, 2]
  labels = np.repeat(np.arange(len(counts)), counts)
  P, K = 3, 2
  order = pipeline.identity_pass(labels, np.random.default_rng(seed), P, K)
  batches = order.reshape(-1, P, K)
  lab = labels[batches]
  assert (lab == lab[:, :, :1]).all()                        # K images of one id, adjacent
  assert all(len(set(b[:, 0])) == P for b in lab)           # P different ids
  used = np.bincount(lab[:, :, 0].ravel(), minlength=len(counts))
  chunks = np.maximum(counts, K) // K                        # remainders below K left out
  assert (used <= chunks).all()
  assert (used < chunks).sum() < P                           # stops when fewer than P ids remain
  for i, n in enumerate(counts):
    mine = order[labels[order] == i]
    assert len(mine) == K * used[i]
    if n >= K:
      assert len(set(mine.tolist())) == len(mine)           # no image twice in a pass
    else:                                                    # drawn up to K from its own
      assert set(mine.tolist()) <= set(np.flatnonzero(labels == i).tolist())


def test_pk_epoch_is_identity_passes_one_after_another():
  labels = np.repeat(np.arange(8), [5, 1, 3, 4, 2, 6, 9, 2])
  epoch = pipeline.epoch_order(labels, seed=4, epoch=2, sampler="pk", ids_per_batch=3,
                               images_per_id=2)
  np.testing.assert_array_equal(
      epoch, pipeline.epoch_order(labels, 4, 2, "pk", 3, 2))  # a pure function of (seed, epoch)
  assert not np.array_equal(epoch, pipeline.epoch_order(labels, 4, 3, "pk", 3, 2))
  rng = np.random.default_rng([4, 2])
  first = pipeline.identity_pass(labels, rng, 3, 2)
  second = pipeline.identity_pass(labels, rng, 3, 2)
  assert len(first) < len(epoch) == (len(labels) // 6) * 6  # one pass is short of an epoch
  np.testing.assert_array_equal(epoch, np.concatenate([first, second])[:len(epoch)])


def test_pass_batches_is_the_mean_pass_length_rounded_down():
  # Hand-computed: 3 ids of 5 images, P = 3, K = 2: every batch takes one chunk of each
  # id, 2 chunks an id (the fifth image left over): 2 batches, whatever the draws.
  assert pipeline.pass_batches(np.repeat(np.arange(3), 5), 3, 2) == 2
  # 4 ids of 2 images and P = 3: each batch leaves one id out, so a pass runs until
  # fewer than 3 ids have their one chunk: always 1 batch.
  assert pipeline.pass_batches(np.repeat(np.arange(4), 2), 3, 2) == 1
  labels = np.repeat(np.arange(8), [5, 1, 3, 4, 2, 6, 9, 2])
  rng = np.random.default_rng(0)  # the fixed generator of pass_batches
  lengths = [len(pipeline.identity_pass(labels, rng, 3, 2)) // 6
             for _ in range(pipeline.PASS_DRAWS)]
  assert pipeline.pass_batches(labels, 3, 2) == int(np.mean(lengths) // 1)
  assert pipeline.pass_batches(labels, 3, 2) < len(labels) // 6  # shorter than len // batch
  # An epoch of n batches is the prefix of the passes, as long as n (longer or shorter).
  rng = np.random.default_rng([4, 2])
  passes = np.concatenate([pipeline.identity_pass(labels, rng, 3, 2) for _ in range(3)])
  for n in (1, 3, 5):
    np.testing.assert_array_equal(
        pipeline.epoch_order(labels, 4, 2, "pk", 3, 2, num_batches=n), passes[:n * 6])


def test_pk_epoch_identity_pass_sets_the_steps_per_epoch(builder):
  common = dict(global_batch=8, transfer_size=(32, 16), sampler="pk", ids_per_batch=4,
                images_per_id=2)
  images = pipeline.TrainData(builder, **common)
  one_pass = pipeline.TrainData(builder, **common, pk_epoch="identity_pass")
  labels = one_pass.labels[0]
  assert one_pass.steps_per_epoch == pipeline.pass_batches(labels, 4, 2)
  assert one_pass.steps_per_epoch < images.steps_per_epoch == len(labels) // 8
  # Step s of epoch 1 starts the second epoch's passes at once.
  s = one_pass.steps_per_epoch
  want = pipeline.epoch_order(labels, 0, 1, "pk", 4, 2, 8, s)[:8]
  np.testing.assert_array_equal(one_pass.rows(s)[0], want)
  np.testing.assert_array_equal(images.rows(0)[0], one_pass.rows(0)[0])  # same draws
  with pytest.raises(ValueError, match="pk_epoch must be one of"):
    pipeline.TrainData(builder, **common, pk_epoch="pass")


def test_two_shards_in_one_process_concatenate(builder):
  one = pipeline.TrainData(builder, global_batch=8, transfer_size=(64, 32), seed=3, num_shards=2)
  assert one.shards == [0, 1] and one.local_batch == 8 and one.shard_batch == 4
  batch = next(one.batches(0))
  assert batch["image"].shape == (8, 64, 32, 3)
  rows = one.rows(0)
  np.testing.assert_array_equal(batch["image"][4:], one.images[1][rows[1]])
  with pytest.raises(ValueError, match="divide the global batch"):
    pipeline.TrainData(builder, global_batch=9, transfer_size=(64, 32), num_shards=2)


def test_pk_needs_ids_per_batch_identities_in_every_shard(builder):
  data = pipeline.TrainData(builder, global_batch=8, transfer_size=(32, 16))
  many = data.num_classes + 1
  with pytest.raises(ValueError, match=f"train shard 0 of 1 holds {data.num_classes} "
                     f"identities; pk sampling needs at least data.ids_per_batch = {many}"):
    pipeline.TrainData(builder, global_batch=many, transfer_size=(32, 16), sampler="pk",
                       ids_per_batch=many, images_per_id=1)


def test_a_batch_larger_than_a_shard_names_the_fields(builder):
  """One line naming train.batch_size and data.shards (a ValueError traceback before)."""
  from jreid import errors  # pylint: disable=g-import-not-at-top
  data = pipeline.TrainData(builder, global_batch=8, transfer_size=(32, 16))
  n = data.num_images
  with pytest.raises(errors.InputError, match=rf"a train shard holds {n // 2} images, fewer "
                     rf"than one shard batch of {n} \(train.batch_size {2 * n} over 2 shards\): "
                     rf"expected train.batch_size at most {2 * (n // 2)}, or fewer data.shards"):
    pipeline.TrainData(builder, global_batch=2 * n, transfer_size=(32, 16), num_shards=2)


def test_eval_batches_cover_every_example_once(builder):
  for batch in (4, 7):
    it, n = pipeline.eval_batches(builder, "gallery", batch, (64, 32))
    got = list(it)
    assert len(got) == n
    index = np.concatenate([b["index"][b["mask"]] for b in got])
    assert sorted(index.tolist()) == list(range(builder.info.splits["gallery"].num_examples))
    assert all(b["image"].shape == (batch, 64, 32, 3) and b["image"].dtype == np.uint8
               for b in got)
  # uint8 pixels of the stored JPEG; cameras 0-based (TFDS holds Market's 1-based ones).
  raw = pipeline.read_records(builder, "gallery")
  first = got[0]
  for i, k in enumerate(first["index"][first["mask"]]):
    np.testing.assert_array_equal(first["image"][i], _decode(raw["image"][k]))
    assert first["camera"][i] == raw["camera"][k] - 1 and first["id"][i] == raw["id"][k]
