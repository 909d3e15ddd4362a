"""Training: optimiser, learning rates, exact resumption after a kill or preemption."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from experiments import tiny
from jreid import sharding
from jreid import stages
from jreid import train
from jreid.data import pipeline


def _config():
  return tiny.get_config()


def test_learning_rate_schedule_and_warmup():
  lr = train.learning_rate(0.01, 10, (4,), 0.1)
  assert float(lr(39)) == pytest.approx(0.01)
  assert float(lr(40)) == pytest.approx(0.001)
  warm = train.learning_rate(0.01, 10, (4,), 0.1, warmup_epochs=1.0)
  assert float(warm(0)) == pytest.approx(0.001)
  assert float(warm(4)) == pytest.approx(0.005)
  assert float(warm(20)) == pytest.approx(0.01)


def test_per_epoch_warmup_is_reid_strong_baselines_law():
  # WarmupMultiStepLR(warmup_factor=0.01, warmup_iters=10, steps=(40, 70)), stepped once
  # an epoch: epoch e < 10 at lr x (0.01 (1 - e / 10) + e / 10), then x0.1 at 40 and 70.
  lr = train.learning_rate(3.5e-4, 100, (40, 70), 0.1, 10.0, warmup_law="epoch",
                           warmup_factor=0.01)
  for step, factor in ((0, 0.01), (99, 0.01), (100, 0.01 * 0.9 + 0.1), (550, 0.01 * 0.5 + 0.5),
                       (999, 0.01 * 0.1 + 0.9), (1000, 1.0), (3999, 1.0), (4000, 0.1),
                       (7000, 0.01)):
    assert float(lr(step)) == pytest.approx(3.5e-4 * factor, rel=1e-6), step
  one = train.learning_rate(3.5e-4, 202, (3,), 0.1, 1.0, warmup_law="epoch")
  assert [float(one(s)) for s in (0, 201, 202, 605, 606)] == pytest.approx(
      [3.5e-6, 3.5e-6, 3.5e-4, 3.5e-4, 3.5e-5])
  with pytest.raises(ValueError, match="warmup_law must be one of"):
    train.learning_rate(0.01, 10, (4,), 0.1, 1.0, warmup_law="cosine")


def test_the_per_step_law_keeps_earlier_digests():
  from experiments import synthetic  # pylint: disable=g-import-not-at-top

  config = synthetic.get_config()
  before = stages.training_sections(config)
  assert "warmup_law" not in before["optimizer"] and "warmup_factor" not in before["optimizer"]
  config.optimizer.warmup_factor = 0.5  # unused by the per-step law
  assert stages.training_digest(config, "d") == stages.training_digest(synthetic.get_config(), "d")
  config.optimizer.warmup_law = "epoch"
  after = stages.training_sections(config)
  assert after["optimizer"]["warmup_law"] == "epoch"
  assert after["optimizer"]["warmup_factor"] == 0.5
  assert stages.training_digest(config, "d") != stages.training_digest(synthetic.get_config(), "d")


def test_sgd_nesterov_weight_decay_and_head_learning_rate():
  config = _config()
  tx = train.make_optimizer(stages.train_params(config).optimizer, steps_per_epoch=100)
  params = {"backbone": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # PyTorch SGD: g = grad + wd * p; buf = g; nesterov step = g + momentum * buf.
  g = 1.0 + 5e-4
  np.testing.assert_allclose(updates["backbone"]["w"], -0.01 * (g + 0.9 * g), rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["w"], -0.1 * (g + 0.9 * g), rtol=1e-6)


def _run(config, workdir, builder, stop_at=None, how="kill", losses=None):
  data = pipeline.TrainData(builder, config.train.batch_size, tuple(config.data.image_size),
                            seed=config.train.seed, num_shards=config.data.shards)

  def batches(start):
    for step, batch in enumerate(data.batches(start), start):
      if stop_at is not None and step == stop_at:
        if how == "kill":
          raise KeyboardInterrupt("killed")
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  result = train.train(stages.train_params(config), workdir, batches, data.num_classes, data.steps_per_epoch)
  return result, data


def _params(result):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(result.state))


def test_train_state_is_named_model_and_optimizer(builder):
  config = _config()
  graphdef, state = train.create_train_state(stages.train_params(config), num_classes=5,
                                             steps_per_epoch=3)
  pure = nnx.to_pure_dict(state)
  assert sorted(pure) == ["model", "optimizer"]
  assert "backbone" in pure["model"] and "head" in pure["model"]
  merged = nnx.merge(graphdef, state)
  assert isinstance(merged["model"], train.heads.ReIDModel)


def test_training_reduces_loss_and_resumes_exactly(builder, tmp_path):
  config = _config()
  config.train.epochs = 3
  config.checkpoint.every_steps, config.checkpoint.keep = 4, 2
  config.log_every_steps = 1
  full, data = _run(config, str(tmp_path / "full"), builder)
  total = 3 * data.steps_per_epoch
  assert full.step == total
  kept = os.listdir(tmp_path / "full" / "checkpoints")
  assert len(kept) == 2 and str(total) in kept  # checkpoint.keep=2, the final one saved
  # The loss falls: TensorBoard has train/loss at every step.
  losses = _scalars(tmp_path / "full" / "tensorboard", "train/loss")
  assert len(losses) == total
  k = data.steps_per_epoch
  assert np.mean(losses[-k:]) < np.mean(losses[:k])

  # Killed at step 10: the checkpoint of step 8 survives; the same call resumes.
  with pytest.raises(KeyboardInterrupt):
    _run(config, str(tmp_path / "killed"), builder, stop_at=10)
  assert "8" in os.listdir(tmp_path / "killed" / "checkpoints")
  resumed, _ = _run(config, str(tmp_path / "killed"), builder)
  jax.tree.map(np.testing.assert_array_equal, _params(full), _params(resumed))

  # Preempted (SIGTERM) at step 6: saves step 7 at once, then resumes from there.
  with pytest.raises(train.Preempted):
    _run(config, str(tmp_path / "preempted"), builder, stop_at=6, how="sigterm")
  assert "7" in os.listdir(tmp_path / "preempted" / "checkpoints")
  again, _ = _run(config, str(tmp_path / "preempted"), builder)
  jax.tree.map(np.testing.assert_array_equal, _params(full), _params(again))
  # A finished run is not redone.
  done, _ = _run(config, str(tmp_path / "full"), builder)
  assert done.step == total
  # A checkpoint of another architecture is refused with one clear error.
  other = _config()
  other.train.epochs = 3
  other.model.width = 8
  with pytest.raises(train.CheckpointMismatch, match="does not fit this model"):
    _run(other, str(tmp_path / "full"), builder)


def _scalars(logdir, tag):
  """Values of a TensorBoard scalar tag, in step order (read back with tensorboardX's
  own protobufs, no TensorFlow)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  import struct  # pylint: disable=g-import-not-at-top
  values = {}
  for name in sorted(os.listdir(logdir)):
    data = open(os.path.join(logdir, name), "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        if v.tag == tag:
          values[event.step] = v.simple_value
  return [values[k] for k in sorted(values)]


def test_loss_goes_down(builder):
  config = _config()
  config.train.epochs = 8
  config.optimizer.decay_epochs = (100,)
  config.model.width, config.model.bottleneck, config.model.dropout = 8, 32, 0.0
  data = pipeline.TrainData(builder, config.train.batch_size, tuple(config.data.image_size),
                            seed=0)
  mesh = sharding.make_mesh()
  graphdef, state = train.create_train_state(stages.train_params(config), data.num_classes,
                                             data.steps_per_epoch)
  state = jax.device_put(state, sharding.replicated(mesh))
  step_fn = train.make_train_step(graphdef, mesh, 0, tuple(config.data.image_size))
  losses = []
  it = data.batches(0)
  for step in range(8 * data.steps_per_epoch):
    state, m = step_fn(state, sharding.to_global(next(it), sharding.data_sharding(mesh)),
                       jnp.int32(step))
    losses.append(float(m["loss"]))
  k = data.steps_per_epoch
  assert np.mean(losses[-k:]) < 0.8 * np.mean(losses[:k])


def test_the_train_and_extract_steps_take_the_convolutions_compiler_options(builder, tmp_path,
                                                                          monkeypatch):
  """On a CPU the training loop compiles its step with its backbone's compiler options
  (a ResNet's: layers.compiler_options of its conv): no convolution of the step (forward, input and kernel gradients) in a
  YNNPACK fusion; without the options XLA puts convolutions there. The extraction step
  too."""
  import test_models  # pylint: disable=g-import-not-at-top  (tests/)
  from jreid import features  # pylint: disable=g-import-not-at-top
  from jreid.models import layers  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "cpu":
    pytest.skip("compiles for XLA:CPU; JAX's default backend here is another")
  config = _config()
  params = stages.train_params(config)
  seen = []
  make = train.make_train_step
  monkeypatch.setattr(train, "make_train_step",
                      lambda *a, **k: seen.append(k.get("compiler_options")) or make(*a, **k))
  config.train.epochs = 1
  _run(config, str(tmp_path / "run"), builder)
  assert seen == [params.model.backbone.compiler_options()] == [layers.CPU_COMPILER_OPTIONS]
  # A model large enough for XLA to give its convolutions to YNNPACK by default.
  config.model.width, config.data.image_size = 32, (64, 32)
  mesh = sharding.make_mesh()
  graphdef, state = train.create_train_state(stages.train_params(config), 5, 3)
  state = jax.device_put(state, sharding.replicated(mesh))
  size = tuple(config.data.image_size)
  batch = {"image": jnp.zeros((8, *size, 3), jnp.uint8), "label": jnp.zeros(8, jnp.int32)}
  for options, counts in (({}, lambda ynn, own: ynn > 0),
                          (layers.CPU_COMPILER_OPTIONS, lambda ynn, own: ynn == 0 and own > 0)):
    step = make(graphdef, mesh, 0, size, compiler_options=options)
    hlo = step.lower(state, batch, jnp.int32(0)).compile().as_text()
    assert counts(*test_models.ynn_and_own_convolutions(hlo)), options
    extract = features.make_extract_step(graphdef, mesh, size, options)
    hlo = extract.lower(state, batch["image"]).compile().as_text()
    assert counts(*test_models.ynn_and_own_convolutions(hlo)), options
  # bfloat16 compute: XLA's own kernel takes it too, and the step trains.
  config.model.dtype = "bfloat16"
  graphdef, state = train.create_train_state(stages.train_params(config), 5, 3)
  state = jax.device_put(state, sharding.replicated(mesh))
  step = make(graphdef, mesh, 0, size, compiler_options=layers.CPU_COMPILER_OPTIONS)
  hlo = step.lower(state, batch, jnp.int32(0)).compile().as_text()
  assert test_models.ynn_and_own_convolutions(hlo)[0] == 0
  _, metrics = step(state, batch, jnp.int32(0))
  assert np.isfinite(float(metrics["loss"]))


def test_a_schedule_of_less_than_one_step_is_an_error(builder, tmp_path):
  """train.epochs=0.01 (a few images' worth) would train nothing and evaluate an
  untrained model: the train stage stops before writing anything."""
  from jreid import errors  # pylint: disable=g-import-not-at-top
  config = _config()
  del config.train.epochs  # a float, as a config file may set it
  config.train.epochs = 0.01
  with pytest.raises(errors.InputError, match=r"train.epochs=0.01: at \d+ steps per epoch "
                     r"that is 0 steps; expected at least one"):
    stages.train(config, str(tmp_path), builder, "d", sharding.make_mesh())
  assert not (tmp_path / "stages").exists() and not (tmp_path / "checkpoints").exists()
  with pytest.raises(ValueError, match="is 0 steps: expected at least one"):
    train.train(stages.train_params(config), str(tmp_path), lambda start: iter(()), 5, 10)


def test_a_damaged_checkpoint_is_named_and_the_latest_intact_one_restored(tmp_path, caplog):
  """A checkpoint whose _METADATA was deleted is damaged, not of other settings (the
  --config.overwrite advice would discard the intact earlier one): it is named and set
  aside, the earlier step is restored, and the run can write the step again."""
  params = stages.train_params(_config())
  mesh = sharding.make_mesh()
  graphdef, state = train.create_train_state(params, num_classes=5, steps_per_epoch=3)
  mngr = train.checkpoint_manager(str(tmp_path), train.CheckpointParams(every_steps=1, keep=5))
  for step in (3, 6):
    mngr.save(step, args=ocp.args.StandardSave(nnx.to_pure_dict(state)), force=True)
  mngr.wait_until_finished()
  (tmp_path / "checkpoints" / "6" / "default" / "_METADATA").unlink()
  # The run that resumes: a new process, a new manager.
  mngr = train.checkpoint_manager(str(tmp_path), train.CheckpointParams(every_steps=1, keep=5))
  _, fresh = train.create_train_state(params, num_classes=5, steps_per_epoch=3)
  restored, step = train.restore_or_init(mngr, fresh, mesh)
  assert step == 3
  assert any("checkpoints of steps 6 in" in r.getMessage() and "resuming from step 3"
             in r.getMessage() for r in caplog.records)
  assert (tmp_path / "checkpoints" / "6.damaged").is_dir()
  assert mngr.all_steps() == [3]
  mngr.save(6, args=ocp.args.StandardSave(nnx.to_pure_dict(restored)), force=True)
  mngr.wait_until_finished()
  assert mngr.all_steps() == [3, 6]
