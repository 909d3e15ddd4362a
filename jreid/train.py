"""Data-parallel training of the visual stream: one SPMD program over every device.

The batch is sharded over the mesh's ``data`` axis (every device of every
process), parameters and optimiser state are replicated, and ``jax.jit`` compiles
one step; BatchNorm statistics are therefore those of the global batch. The
step is a pure function of (state, batch, step): dropout keys are folded from
the step number and the input pipeline is deterministic, so a run resumed from a
checkpoint reproduces the uninterrupted one.

Only this module knows about optimisers and checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Callable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jreid import augment
from jreid.models import convert
from jreid.models import heads
from jreid.models import resnet

DATA_AXIS = "data"


def validate(config: ml_collections.ConfigDict, device_count: int, process_count: int = 1
             ) -> None:
  """Raises ValueError, naming the field, for a config that cannot run on these devices."""
  problems = []
  if config.batch_size % device_count:
    problems.append(f"batch_size {config.batch_size} must divide by the {device_count} devices")
  if config.eval_batch_size % device_count:
    problems.append(f"eval_batch_size {config.eval_batch_size} must divide by the "
                    f"{device_count} devices")
  shards = config.data_shards or process_count
  if shards % process_count or config.batch_size % shards:
    problems.append(f"data_shards {shards} must be a multiple of the {process_count} "
                    f"processes and divide batch_size {config.batch_size}")
  if config.model.dtype not in ("float32", "bfloat16"):
    problems.append(f"model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}")
  if config.model.depth not in (0, 18, 34, 50) or (config.model.depth == 0 and
                                                   not config.model.stage_blocks):
    problems.append(f"model.depth must be 18, 34 or 50 (or 0 with model.stage_blocks), "
                    f"got {config.model.depth}")
  if config.sampler == "pk" and config.batch_size % (config.ids_per_batch * config.images_per_id):
    problems.append("sampler 'pk' needs batch_size to be a multiple of ids_per_batch x "
                    "images_per_id")
  if problems:
    raise ValueError("config does not fit this run: " + "; ".join(problems))


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis ``data``."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def model_config(config: ml_collections.ConfigDict) -> heads.ModelConfig:
  m = config.model
  return heads.ModelConfig(
      backbone=resnet.BackboneConfig(
          depth=m.depth, last_stride=m.last_stride, width=m.width,
          stage_blocks=tuple(m.stage_blocks) if m.stage_blocks else None,
          dtype=jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32),
      parts=m.parts, bottleneck=m.bottleneck, dropout=m.dropout)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> heads.ReIDModel:
  """The ReID model, from scratch or with an ImageNet backbone (config.model.imagenet)."""
  model = heads.ReIDModel(model_config(config), num_classes, rngs=nnx.Rngs(config.seed))
  if config.model.imagenet:
    ignored = convert.load_imagenet_backbone(model, config.model.imagenet)
    logging.info("backbone initialised from %s (ignored: %s)", config.model.imagenet, ignored)
  return model


def learning_rate(base: float, steps_per_epoch: int, decay_epochs, decay: float,
                  warmup_epochs: float = 0.0) -> optax.Schedule:
  """Step decay (x decay at each epoch in decay_epochs) with optional linear warm-up."""
  boundaries = {int(e * steps_per_epoch): decay for e in decay_epochs}
  schedule = optax.piecewise_constant_schedule(base, boundaries)
  warmup = int(warmup_epochs * steps_per_epoch)
  if warmup <= 0:
    return schedule
  return lambda step: schedule(step) * jnp.minimum(1.0, (step + 1) / warmup)


def param_labels(params) -> Any:
  """'backbone' for backbone parameters, 'head' for the rest (10x learning rate)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "backbone" if getattr(path[0], "key", None) == "backbone" else "head",
      params)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int
                   ) -> optax.GradientTransformation:
  """SGD, momentum 0.9, Nesterov, weight decay; heads at lr x head_lr_multiplier."""
  o = config.optimizer
  def sgd(lr):
    return optax.chain(
        optax.add_decayed_weights(o.weight_decay),
        optax.sgd(learning_rate(lr, steps_per_epoch, o.decay_epochs, o.decay, o.warmup_epochs),
                  momentum=o.momentum, nesterov=o.nesterov))
  return optax.multi_transform({"backbone": sgd(o.lr), "head": sgd(o.lr * o.head_lr_multiplier)},
                               param_labels)


def make_train_step(graphdef, mesh, seed: int, image_size: tuple[int, int],
                    augment_params: augment.AugmentParams = augment.AugmentParams()
                    ) -> Callable:
  """jit(state, batch, step) -> (state, metrics); batch sharded, state replicated.

  batch: {"image": uint8 [B, h, w, 3] at the transfer size, "label": int32 [B]};
  the images are resized to ``image_size`` (height, width), flipped, normalised
  and erased on the device in the model's compute dtype (``augment.train_input``),
  with draws from (seed, step, position in the global batch). A float "image"
  [B, H, W, 3] is taken as ready model input (benchmarks: the step without input work).
  """
  base_key = jax.random.key(seed)
  size = tuple(image_size)

  def step_fn(state, batch, step):
    model, optimizer = nnx.merge(graphdef, state)
    key = jax.random.fold_in(base_key, step)
    images = batch["image"]
    if images.dtype == jnp.uint8:
      draws = augment.draw(seed, step, images.shape[0], augment_params)
      images = augment.train_input(images, draws, size, augment_params,
                                   model.config.backbone.dtype)

    def loss_fn(model):
      logits, _ = model(images, rngs=nnx.Rngs(dropout=key))
      losses = heads.part_losses(logits, batch["label"])
      return losses.sum(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    accuracy = jnp.mean(jnp.argmax(logits.sum(axis=1), axis=-1) == batch["label"])
    return nnx.state((model, optimizer)), {"loss": loss, "accuracy": accuracy}

  repl, data = replicated(mesh), data_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                 donate_argnums=0)


class _PreemptionFlag:
  """Set by SIGTERM (spot/preemptible VMs); the loop saves and stops at the next step."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, *_):
    logging.warning("SIGTERM: saving a checkpoint and stopping")
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Preempted(Exception):
  """Training stopped on preemption after saving; the same command resumes."""


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir) if "://" not in workdir else workdir, "checkpoints"),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.keep_checkpoints,
          save_interval_steps=config.checkpoint_every_steps, create=True))


def restore_or_init(mngr: ocp.CheckpointManager, state, mesh) -> tuple[Any, int]:
  """The latest checkpoint's state (replicated on the mesh) and its step, else (state, 0)."""
  state = jax.device_put(state, replicated(mesh))
  step = mngr.latest_step()
  if step is None:
    return state, 0
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)),
      nnx.to_pure_dict(state))
  restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  nnx.replace_by_pure_dict(state, restored)
  logging.info("resumed from the checkpoint of step %d", step)
  return state, step


class MetricWriter:
  """TensorBoard scalars (process 0 only; tensorboardX, no TensorFlow) plus the log."""

  def __init__(self, logdir: str):
    self._writer = None
    if jax.process_index() == 0:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._writer = SummaryWriter(logdir)
      except ImportError:
        logging.warning("tensorboardX is not installed: no TensorBoard scalars")

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._writer is not None:
      for k, v in values.items():
        self._writer.add_scalar(k, v, step)
      self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


@dataclasses.dataclass
class TrainResult:
  graphdef: Any
  state: Any
  step: int


def train(config: ml_collections.ConfigDict, workdir: str, batches: Callable[[int], Iterator],
          to_global: Callable, num_classes: int, steps_per_epoch: int, mesh=None) -> TrainResult:
  """Trains (or resumes) until config.epochs; returns the final replicated state.

  Args:
    batches: start_step -> iterator of local numpy batches ("image", "label").
    to_global: (local batch, sharding) -> global jax.Arrays.
    num_classes: identities of the train split.
    steps_per_epoch: steps in one epoch (the same on every process).
  """
  validate(config, jax.device_count(), jax.process_count())
  mesh = mesh or make_mesh()
  total = int(config.epochs * steps_per_epoch)
  model = build_model(config, num_classes)
  model.train()
  optimizer = nnx.Optimizer(model, make_optimizer(config, steps_per_epoch), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  mngr = checkpoint_manager(workdir, config)
  state, start = restore_or_init(mngr, state, mesh)
  if start >= total:
    logging.info("training: finished already (step %d of %d)", start, total)
    return TrainResult(graphdef, state, start)
  logging.info("training: %d params, %d devices (%d processes), global batch %d, "
               "steps %d..%d (%d per epoch)", heads.count_params(model), jax.device_count(),
               jax.process_count(), config.batch_size, start, total, steps_per_epoch)
  a = config.augment
  step_fn = make_train_step(graphdef, mesh, config.seed, tuple(config.image_size),
                            augment.AugmentParams(flip=a.flip,
                                                  erase_probability=a.erase_probability,
                                                  erase_area=tuple(a.erase_area),
                                                  erase_min_aspect=a.erase_min_aspect))
  writer = MetricWriter(os.path.join(workdir, "tensorboard"))
  sharding = data_sharding(mesh)
  it = batches(start)
  last_time, last_step, first_time = time.time(), start, time.time()
  schedule = learning_rate(config.optimizer.lr, steps_per_epoch, config.optimizer.decay_epochs,
                           config.optimizer.decay, config.optimizer.warmup_epochs)
  # However the loop ends (finished, preempted, interrupted), checkpoints in flight
  # are completed before returning or raising.
  with _PreemptionFlag() as flag:
    try:
      for step in range(start, total):
        batch = to_global(next(it), sharding)
        state, metrics = step_fn(state, batch, jnp.int32(step))
        done = step + 1
        if done % config.log_every_steps == 0 or done == total:
          m = jax.device_get(metrics)
          now = time.time()
          rate = (done - last_step) / max(now - last_time, 1e-9)
          eta = (total - done) / rate if rate > 0 else float("nan")
          lr = float(schedule(step))
          logging.info("step %d/%d  epoch %.2f  loss %.4f  acc %.3f  lr %.2g  %.2f steps/s  "
                       "%.1f images/s  ETA %.0f s", done, total, done / steps_per_epoch,
                       m["loss"], m["accuracy"], lr, rate, rate * config.batch_size, eta)
          writer.scalars(done, {"train/loss": float(m["loss"]),
                                "train/accuracy": float(m["accuracy"]),
                                "train/learning_rate": lr, "train/steps_per_s": rate,
                                "train/images_per_s": rate * config.batch_size})
          last_time, last_step = now, done
        preempted = flag.raised or mngr.reached_preemption(done)
        mngr.save(done, args=ocp.args.StandardSave(nnx.to_pure_dict(state)),
                  force=preempted or done == total)
        if preempted:
          raise Preempted(f"preempted at step {done}; run the same command to resume")
    finally:
      mngr.wait_until_finished()
      writer.close()
  logging.info("training: %d steps in %.0f s", total - start, time.time() - first_time)
  return TrainResult(graphdef, state, total)
