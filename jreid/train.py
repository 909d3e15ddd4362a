"""Data-parallel training of the visual stream: one SPMD program over every device.

The batch is sharded over the mesh's ``data`` axis (every device of every
process), parameters and optimiser state are replicated, and ``jax.jit`` compiles
one step; BatchNorm statistics are therefore those of the global batch. The
step is a pure function of (state, batch, step): dropout keys are folded from
the step number and the input pipeline is deterministic, so a run resumed from a
checkpoint reproduces the uninterrupted one.

Only this module knows about optimisers and checkpoints. It takes typed parameters
(``TrainParams``), which the jobs make from a config (``jreid.stages.train_params``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any, Callable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from flax import nnx

from jreid import augment
from jreid import files
from jreid import losses
from jreid import progress
from jreid import sharding
from jreid.models import convert
from jreid.models import heads


@dataclasses.dataclass(frozen=True)
class OptimizerParams:
  """The optimiser and its learning-rate schedule (``make_optimizer``, ``learning_rate``).

  name: "sgd" (momentum, optionally Nesterov) or "adam"; lr: the backbone's learning
  rate, the heads' is lr x head_lr_multiplier; weight_decay: coupled L2 (added to the
  gradient, as torch.optim); decay_epochs, decay: x decay at each of these epochs;
  warmup_epochs, warmup_law, warmup_factor: ``learning_rate``'s warm-up.
  """
  name: str = "sgd"
  lr: float = 0.01
  head_lr_multiplier: float = 10.0
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 5e-4
  decay_epochs: tuple[float, ...] = (40,)
  decay: float = 0.1
  warmup_epochs: float = 0.0
  warmup_law: str = "step"
  warmup_factor: float = 0.01
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8


@dataclasses.dataclass(frozen=True)
class CheckpointParams:
  """A checkpoint every ``every_steps`` steps (and at the end, or on preemption); the
  latest ``keep`` are kept."""
  every_steps: int = 500
  keep: int = 3


@dataclasses.dataclass(frozen=True)
class TrainParams:
  """Everything ``train`` needs, as typed values (the jobs translate configs into these).

  Attributes:
    model: the network; imagenet: an ImageNet backbone file to start from ("": none).
    optimizer: the optimiser and schedule.
    epochs: length of the run (fractional epochs allowed; at least one step).
    batch_size: the global batch, over every device of every process.
    seed: initialisation, dropout and augmentation draws.
    image_size: (height, width) of the model's input (the batches are resized to it).
    augment, crop_pad: the on-device augmentation (``make_train_step``).
    loss: keyword arguments of ``losses.reid_loss``.
    checkpoint: how often checkpoints are written, and how many kept.
    log_every_steps: steps between progress lines and TensorBoard scalars.
  """
  model: heads.ModelConfig = heads.ModelConfig()
  imagenet: str = ""
  optimizer: OptimizerParams = OptimizerParams()
  epochs: float = 60.0
  batch_size: int = 32
  seed: int = 0
  image_size: tuple[int, int] = (384, 192)
  augment: augment.AugmentParams = augment.AugmentParams()
  crop_pad: int = 0
  loss: dict = dataclasses.field(default_factory=dict)
  checkpoint: CheckpointParams = CheckpointParams()
  log_every_steps: int = 50


def build_model(model: heads.ModelConfig, num_classes: int, seed: int = 0,
                imagenet: str = "") -> heads.ReIDModel:
  """The ReID model, initialised from ``seed``, with an ImageNet backbone file when given."""
  built = heads.ReIDModel(model, num_classes, rngs=nnx.Rngs(seed))
  if imagenet:
    ignored = convert.load_imagenet_backbone(built, imagenet)
    counters = [n for n in ignored if n.endswith("num_batches_tracked")]
    others = [n for n in ignored if not n.endswith("num_batches_tracked")]
    logging.info("backbone initialised from %s (ignored %d tensors: %d BatchNorm step "
                 "counters%s)", imagenet, len(ignored), len(counters),
                 f", {', '.join(others)}" if others else "")
  return built


WARMUP_LAWS = ("step", "epoch")
OPTIMIZERS = ("sgd", "adam")


def learning_rate(base: float, steps_per_epoch: int, decay_epochs, decay: float,
                  warmup_epochs: float = 0.0, warmup_law: str = "step",
                  warmup_factor: float = 0.01) -> optax.Schedule:
  """Step decay (x decay at each epoch in decay_epochs) with optional linear warm-up.

  warmup_law "step": the factor rises every step, (step + 1) / warm-up steps, to 1 at
  epoch ``warmup_epochs``. "epoch": reid-strong-baseline's WarmupMultiStepLR, one
  factor per epoch e (0-based), warmup_factor (1 - a) + a with a = e / warmup_epochs,
  for e < warmup_epochs (the first epoch at warmup_factor x base).
  """
  if warmup_law not in WARMUP_LAWS:
    raise ValueError(f"warmup_law must be one of {WARMUP_LAWS}, got {warmup_law!r}")
  boundaries = {int(e * steps_per_epoch): decay for e in decay_epochs}
  schedule = optax.piecewise_constant_schedule(base, boundaries)
  warmup = int(warmup_epochs * steps_per_epoch)
  if warmup <= 0:
    return schedule
  if warmup_law == "epoch":
    def per_epoch(step):
      a = (step // steps_per_epoch) / warmup_epochs
      return schedule(step) * jnp.where(a < 1, warmup_factor * (1 - a) + a, 1.0)
    return per_epoch
  return lambda step: schedule(step) * jnp.minimum(1.0, (step + 1) / warmup)


def optimizer_schedule(o: OptimizerParams, lr: float, steps_per_epoch: int) -> optax.Schedule:
  """``learning_rate`` at ``lr`` with the optimiser's decay and warm-up."""
  return learning_rate(lr, steps_per_epoch, o.decay_epochs, o.decay, o.warmup_epochs,
                       o.warmup_law, o.warmup_factor)


def param_labels(params) -> Any:
  """'backbone' for backbone parameters, 'head' for the rest (10x learning rate)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "backbone" if getattr(path[0], "key", None) == "backbone" else "head",
      params)


def make_optimizer(o: OptimizerParams, steps_per_epoch: int) -> optax.GradientTransformation:
  """o.name: "sgd" (momentum, Nesterov) or "adam"; heads at lr x head_lr_multiplier.

  Both add weight_decay x parameters to the gradient first (coupled L2, as
  torch.optim.SGD/Adam) and follow ``learning_rate`` (warm-up, step decay).
  """
  if o.name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name must be {' or '.join(map(repr, OPTIMIZERS))}, "
                     f"got {o.name!r}")
  def make(lr):
    schedule = optimizer_schedule(o, lr, steps_per_epoch)
    if o.name == "adam":
      step = optax.adam(schedule, b1=o.adam_b1, b2=o.adam_b2, eps=o.adam_eps)
    else:
      step = optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov)
    return optax.chain(optax.add_decayed_weights(o.weight_decay), step)
  return optax.multi_transform({"backbone": make(o.lr), "head": make(o.lr * o.head_lr_multiplier)},
                               param_labels)


def create_train_state(params: TrainParams, num_classes: int, steps_per_epoch: int
                       ) -> tuple[Any, nnx.State]:
  """The model (in training mode) and its optimiser, split into (graphdef, state).

  The state is ``{"model": ..., "optimizer": ...}``: checkpoints read as names.
  """
  model = build_model(params.model, num_classes, params.seed, params.imagenet)
  model.train()
  optimizer = nnx.Optimizer(model, make_optimizer(params.optimizer, steps_per_epoch),
                            wrt=nnx.Param)
  return nnx.split({"model": model, "optimizer": optimizer})


def make_train_step(graphdef, mesh, seed: int, image_size: tuple[int, int],
                    augment_params: augment.AugmentParams = augment.AugmentParams(),
                    loss: dict | None = None, crop_pad: int = 0,
                    compiler_options: dict | None = None) -> Callable:
  """jit(state, batch, step) -> (state, metrics); batch sharded, state replicated.

  batch: {"image": uint8 [B, h, w, 3] at the transfer size, "label": int32 [B]};
  the images are resized to ``image_size`` (height, width), flipped, normalised
  and erased on the device in the model's compute dtype (``augment.train_input``),
  with draws from (seed, step, position in the global batch). A float "image"
  [B, H, W, 3] is taken as ready model input (benchmarks: the step without input work).
  crop_pad: on-device pad-and-crop between the flip and erasing (``augment.train_input``;
  padding 0 is the mean colour after normalisation), 0: off. loss: keyword arguments of
  ``losses.reid_loss`` (label_smoothing, triplet_weight, margin; none: the
  reference's PCB loss). compiler_options: XLA's, for the model's convolutions
  (its backbone config's ``compiler_options()``; ``stages.compiler_options``).
  """
  base_key = jax.random.key(seed)
  size = tuple(image_size)
  loss = dict(loss or {})

  def step_fn(state, batch, step):
    merged = nnx.merge(graphdef, state)
    model, optimizer = merged["model"], merged["optimizer"]
    key = jax.random.fold_in(base_key, step)
    images = batch["image"]
    crop_key = jax.random.fold_in(key, 1)
    if images.dtype == jnp.uint8:
      draws = augment.draw(seed, step, images.shape[0], augment_params)
      offsets = augment.crop_offsets(crop_key, images.shape[0], crop_pad) if crop_pad else None
      images = augment.train_input(images, draws, size, augment_params,
                                   model.config.backbone.dtype, offsets, crop_pad)
    else:
      images = augment.random_pad_crop(images, crop_key, crop_pad)

    def loss_fn(model):
      logits, embeddings = model(images, rngs=nnx.Rngs(dropout=key))
      total, terms = losses.reid_loss(logits, embeddings, batch["label"], **loss)
      return total, (logits, terms)

    (total, (logits, terms)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    accuracy = jnp.mean(jnp.argmax(logits.sum(axis=1), axis=-1) == batch["label"])
    return nnx.state(merged), {"loss": total, "accuracy": accuracy, **terms}

  repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                 donate_argnums=0, compiler_options=compiler_options or None)


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


def checkpoint_manager(workdir: str, checkpoint: CheckpointParams | None = None
                       ) -> ocp.CheckpointManager:
  """The manager of ``<workdir>/checkpoints``: writing with ``checkpoint``'s interval and
  retention, read-only without it (restoring a trained workdir)."""
  directory = files.join(os.path.abspath(workdir) if "://" not in workdir else workdir,
                         "checkpoints")
  if checkpoint is None:
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False))
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      max_to_keep=checkpoint.keep, save_interval_steps=checkpoint.every_steps, create=True))


class CheckpointMismatch(ValueError):
  """A checkpoint whose tree is not this state's (other settings, or an older jreid)."""


def restore_or_init(mngr: ocp.CheckpointManager, state, mesh, set_aside_damaged: bool = True
                    ) -> tuple[Any, int]:
  """The latest intact checkpoint's state (replicated on the mesh) and its step, else
  (state, 0).

  A checkpoint whose files are missing (a deleted ``_METADATA``, a copy cut short:
  ``_missing_files``) is damaged, not of other settings: it is reported by step, and
  the latest intact one is restored. With ``set_aside_damaged`` (a training run) the
  main process renames damaged step folders ``<step>.damaged``, so that the run can
  write those steps again. Every process scans the same files between barriers, so
  all agree on the step.
  """
  state = jax.device_put(state, sharding.replicated(mesh))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
      nnx.to_pure_dict(state))
  sharding.sync("jreid: checkpoints to scan")
  steps = sorted(mngr.all_steps(), reverse=True)
  damaged = [(s, why) for s in steps for why in [_missing_files(mngr, s)] if why]
  intact = [s for s in steps if s not in {d for d, _ in damaged}]
  if damaged:
    if not intact and not set_aside_damaged:
      raise CheckpointMismatch(
          f"every checkpoint in {mngr.directory} is damaged (steps "
          f"{', '.join(str(s) for s, _ in damaged)}; step {damaged[0][0]}: {damaged[0][1]}): "
          f"train the model again")
    logging.warning("checkpoints of steps %s in %s are damaged (step %d: %s): %s%s",
                    ", ".join(str(s) for s, _ in damaged), mngr.directory, damaged[0][0],
                    damaged[0][1], f"resuming from step {intact[0]}" if intact
                    else "training from the start",
                    "; they are set aside as <step>.damaged" if set_aside_damaged else "")
  if set_aside_damaged:
    sharding.sync("jreid: checkpoints scanned")
    if damaged and sharding.is_main_process():
      for step, _ in damaged:
        _set_aside(os.fspath(mngr.directory), step)
    sharding.sync("jreid: damaged checkpoints set aside")
    if damaged:
      mngr.reload()
  if not intact:
    return state, 0
  step = intact[0]
  saved = mngr.item_metadata(step)  # None when the manager has no handler yet
  saved_keys = sorted(saved.keys()) if hasattr(saved, "keys") else None
  if saved_keys is not None and saved_keys != sorted(abstract.keys()):
    raise CheckpointMismatch(
        f"the checkpoint of step {step} in {mngr.directory} holds {saved_keys}, not "
        f"{sorted(abstract.keys())} (written by an older jreid): use a new workdir or "
        f"--config.overwrite=True")
  try:
    restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except FileNotFoundError as e:
    raise CheckpointMismatch(
        f"the checkpoint of step {step} in {mngr.directory} lacks a file "
        f"({str(e).splitlines()[0][:200]}): it is damaged; move that step's folder away to "
        f"resume from the one before") from e
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointMismatch(
        f"the checkpoint of step {step} in {mngr.directory} does not fit this model "
        f"({str(e).splitlines()[0][:200]}): use a new workdir or --config.overwrite=True"
    ) from e
  nnx.replace_by_pure_dict(state, restored)
  logging.info("resumed from the checkpoint of step %d", step)
  return state, step


def _set_aside(directory: str, step: int) -> None:
  """Renames the folder of ``step`` to ``<step>.damaged`` (or ``.damaged.<n>``)."""
  target, n = files.join(directory, f"{step}.damaged"), 1
  while files.exists(target):
    target, n = files.join(directory, f"{step}.damaged.{n}"), n + 1
  files.path(files.join(directory, str(step))).rename(target)


def _missing_files(mngr: ocp.CheckpointManager, step: int) -> str:
  """What orbax's layout lacks in the checkpoint of ``step`` ("" when complete): each
  item folder of ``<step>/`` holds its ``_METADATA``."""
  folder = files.path(files.join(os.fspath(mngr.directory), str(step)))
  items = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
  if not items:
    return f"{folder} holds no item folder"
  for item in items:
    if not (item / "_METADATA").exists():
      return f"{item}/_METADATA is missing"
  return ""


@dataclasses.dataclass
class TrainResult:
  graphdef: Any
  state: Any
  step: int


def train(params: TrainParams, workdir: str, batches: Callable[[int], Iterator],
          num_classes: int, steps_per_epoch: int, mesh=None) -> TrainResult:
  """Trains (or resumes) until ``params.epochs``; returns the final replicated state.

  Args:
    batches: start_step -> iterator of this process's numpy batches ("image", "label").
    num_classes: identities of the train split.
    steps_per_epoch: steps in one epoch (the same on every process).
  """
  mesh = mesh or sharding.make_mesh()
  total = total_steps(params.epochs, steps_per_epoch)
  if total < 1:
    raise ValueError(f"epochs={params.epochs} x {steps_per_epoch} steps per epoch is "
                     f"{total} steps: expected at least one")
  graphdef, state = create_train_state(params, num_classes, steps_per_epoch)
  mngr = checkpoint_manager(workdir, params.checkpoint)
  state, start = restore_or_init(mngr, state, mesh)
  if start >= total:
    logging.info("training: finished already (step %d of %d)", start, total)
    return TrainResult(graphdef, state, start)
  logging.info("training: %d params, %d devices (%d processes), global batch %d, "
               "steps %d..%d (%d per epoch)",
               heads.count_params(nnx.merge(graphdef, state)["model"]), jax.device_count(),
               jax.process_count(), params.batch_size, start, total, steps_per_epoch)
  step_fn = make_train_step(graphdef, mesh, params.seed, params.image_size, params.augment,
                            loss=params.loss, crop_pad=params.crop_pad,
                            compiler_options=params.model.backbone.compiler_options())
  writer = progress.MetricWriter(os.path.join(workdir, "tensorboard"))
  batch_sharding = sharding.data_sharding(mesh)
  it = batches(start)
  meter = progress.Progress("training", total, unit="steps", start=start)
  schedule = optimizer_schedule(params.optimizer, params.optimizer.lr, steps_per_epoch)
  # However the loop ends (finished, preempted, interrupted), checkpoints in flight
  # are completed before returning or raising.
  with _PreemptionFlag() as flag:
    try:
      for step in range(start, total):
        batch = sharding.to_global(next(it), batch_sharding)
        state, metrics = step_fn(state, batch, jnp.int32(step))
        done = step + 1
        if done % params.log_every_steps == 0 or done == total:
          m = jax.device_get(metrics)
          lr = float(schedule(step))
          meter.update(done, force=True, extra=(
              f"epoch {done / steps_per_epoch:.2f}  loss {m['loss']:.4f}  "
              f"acc {m['accuracy']:.3f}  lr {lr:.2g}"))
          rate = meter.rate or 0.0
          writer.scalars(done, {"train/loss": float(m["loss"]),
                                "train/accuracy": float(m["accuracy"]),
                                "train/learning_rate": lr, "train/steps_per_s": rate,
                                "train/images_per_s": rate * params.batch_size})
        preempted = flag.raised or mngr.reached_preemption(done)
        mngr.save(done, args=ocp.args.StandardSave(nnx.to_pure_dict(state)),
                  force=preempted or done == total)
        if preempted:
          raise Preempted(f"preempted at step {done}; run the same command to resume")
    finally:
      mngr.wait_until_finished()
      writer.close()
  meter.finish()
  return TrainResult(graphdef, state, total)


def total_steps(epochs: float, steps_per_epoch: int) -> int:
  """The steps of ``epochs`` epochs (rounded down)."""
  return int(epochs * steps_per_epoch)


def restore_trained(workdir: str, params: TrainParams, num_classes: int,
                    steps_per_epoch: int, mesh) -> TrainResult:
  """The latest checkpoint of a trained workdir (read-only), restored into the train
  state that ``params`` builds; ``params.imagenet`` is not read (the checkpoint holds
  every weight)."""
  mngr = checkpoint_manager(workdir)
  if mngr.latest_step() is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint; expected a trained workdir")
  graphdef, state = create_train_state(dataclasses.replace(params, imagenet=""), num_classes,
                                       steps_per_epoch)
  state, step = restore_or_init(mngr, state, mesh, set_aside_damaged=False)
  return TrainResult(graphdef, state, step)
