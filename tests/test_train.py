"""Training: optimiser, learning rates, exact resumption after a kill or preemption."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import tiny
from jreid import train
from jreid.data import pipeline


def _config(**overrides):
  config = tiny.get_config()
  config.update(overrides)
  return config


def test_learning_rate_schedule_and_warmup():
  lr = train.learning_rate(0.01, 10, (4,), 0.1)
  assert float(lr(39)) == pytest.approx(0.01)
  assert float(lr(40)) == pytest.approx(0.001)
  warm = train.learning_rate(0.01, 10, (4,), 0.1, warmup_epochs=1.0)
  assert float(warm(0)) == pytest.approx(0.001)
  assert float(warm(4)) == pytest.approx(0.005)
  assert float(warm(20)) == pytest.approx(0.01)


def test_sgd_nesterov_weight_decay_and_head_learning_rate():
  config = _config()
  tx = train.make_optimizer(config, steps_per_epoch=100)
  params = {"backbone": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # PyTorch SGD: g = grad + wd * p; buf = g; nesterov step = g + momentum * buf.
  g = 1.0 + 5e-4
  np.testing.assert_allclose(updates["backbone"]["w"], -0.01 * (g + 0.9 * g), rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["w"], -0.1 * (g + 0.9 * g), rtol=1e-6)


def _run(config, workdir, builder, stop_at=None, how="kill"):
  data = pipeline.TrainData(builder, config.batch_size, tuple(config.image_size),
                            seed=config.seed, num_shards=config.data_shards)

  def batches(start):
    for step, batch in enumerate(data.batches(start), start):
      if stop_at is not None and step == stop_at:
        if how == "kill":
          raise KeyboardInterrupt("killed")
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  result = train.train(config, workdir, batches, pipeline.to_global, data.num_classes,
                       data.steps_per_epoch)
  return result, data


def _params(result):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(result.state))


def test_training_reduces_loss_and_resumes_exactly(builder, tmp_path):
  config = _config(epochs=3, checkpoint_every_steps=4, keep_checkpoints=2)
  full, data = _run(config, str(tmp_path / "full"), builder)
  total = 3 * data.steps_per_epoch
  assert full.step == total
  kept = os.listdir(tmp_path / "full" / "checkpoints")
  assert len(kept) == 2 and str(total) in kept  # keep_checkpoints=2, the final one saved

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


def test_loss_goes_down(builder, tmp_path):
  config = _config(epochs=8, checkpoint_every_steps=1000, log_every_steps=1000)
  config.optimizer.decay_epochs = (100,)
  config.model.width, config.model.bottleneck, config.model.dropout = 8, 32, 0.0
  data = pipeline.TrainData(builder, config.batch_size, tuple(config.image_size), seed=0)
  mesh = train.make_mesh()
  model = train.build_model(config, data.num_classes)
  model.train()
  opt = nnx.Optimizer(model, train.make_optimizer(config, data.steps_per_epoch), wrt=nnx.Param)
  graphdef, state = nnx.split((model, opt))
  state = jax.device_put(state, train.replicated(mesh))
  step_fn = train.make_train_step(graphdef, mesh, 0, tuple(config.image_size))
  losses = []
  it = data.batches(0)
  for step in range(8 * data.steps_per_epoch):
    state, m = step_fn(state, pipeline.to_global(next(it), train.data_sharding(mesh)),
                       jnp.int32(step))
    losses.append(float(m["loss"]))
  k = data.steps_per_epoch
  assert np.mean(losses[-k:]) < 0.8 * np.mean(losses[:k])
