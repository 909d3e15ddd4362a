"""PCB (part-based) and BNNeck (global) heads, and the ReID model that joins them.

PCB (Sun et al. 2018, as ``docs/reference.md`` section 6): the feature map is
average-pooled into P horizontal parts (PyTorch ``AdaptiveAvgPool2d((P, 1))``
bins), dropout 0.5, then per part Linear C->256, BatchNorm, Dropout 0.5,
Linear 256->num_classes. The P part classifiers are held as stacked parameters
and applied with one einsum; BatchNorm over the [P * 256] features keeps
per-part statistics exactly as P separate BatchNorm1d layers would.

BNNeck (Luo et al. 2019, "bag of tricks"): global average pooling, a BatchNorm
without shift, a bias-free classifier; the pre-BN feature feeds the triplet loss
and the BN feature retrieval. ``HEADS`` maps config.model.head to the class.
The losses live in ``jreid.losses``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jreid.models import mobilenet
from jreid.models import resnet

# config.model.backbone chooses one: name -> (its config dataclass, its module).
BACKBONES = {"resnet": (resnet.BackboneConfig, resnet.ResNet),
             "mobilenet_v2": (mobilenet.MobileNetV2Config, mobilenet.MobileNetV2)}


def part_pool(x: jax.Array, parts: int) -> jax.Array:
  """[B, h, w, C] -> [B, parts, C]: mean over rows floor(i h / P) .. ceil((i + 1) h / P)."""
  h = x.shape[1]
  rows = x.mean(axis=2)  # [B, h, C]
  out = []
  for i in range(parts):
    lo, hi = (i * h) // parts, -((-(i + 1) * h) // parts)
    out.append(rows[:, lo:hi].mean(axis=1))
  return jnp.stack(out, axis=1)


class PartClassifiers(nnx.Module):
  """P independent ClassBlocks: Linear(C, 256) -> BN -> Dropout -> Linear(256, classes)."""

  def __init__(self, parts: int, in_features: int, num_classes: int, bottleneck: int = 256,
               dropout: float = 0.5, dtype: Any = jnp.float32, *, rngs: nnx.Rngs):
    self.parts, self.dtype = parts, dtype
    kaiming = nnx.initializers.variance_scaling(2.0, "fan_out", "normal", in_axis=-2, out_axis=-1)
    self.kernel1 = nnx.Param(kaiming(rngs.params(), (parts, in_features, bottleneck)))
    self.bias1 = nnx.Param(jnp.zeros((parts, bottleneck)))
    self.bn = nnx.BatchNorm(parts * bottleneck, momentum=0.9, epsilon=1e-5, dtype=dtype,
                            # The reference's ClassBlock initialises BatchNorm1d weights N(1, 0.02).
                            scale_init=lambda k, s, d=jnp.float32: 1.0 + 0.02 * jax.random.normal(k, s, d),
                            rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.kernel2 = nnx.Param(0.001 * jax.random.normal(rngs.params(), (parts, bottleneck, num_classes)))
    self.bias2 = nnx.Param(jnp.zeros((parts, num_classes)))

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    """[B, P, C] -> logits [B, P, num_classes] (float32); rngs feeds dropout in training."""
    b = x.shape[0]
    y = jnp.einsum("bpc,pcd->bpd", x, self.kernel1[...].astype(self.dtype)) + self.bias1[...]
    y = self.bn(y.reshape(b, -1)).reshape(y.shape)
    y = self.dropout(y, rngs=rngs)
    logits = jnp.einsum("bpd,pdk->bpk", y, self.kernel2[...].astype(self.dtype)) + self.bias2[...]
    return logits.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """backbone: the config of a BACKBONES entry (a ResNet's by default); head: a key of
  HEADS; parts: 6 for PCB (1 for global heads)."""
  backbone: resnet.BackboneConfig | mobilenet.MobileNetV2Config = resnet.BackboneConfig()
  head: str = "pcb"
  parts: int = 6
  bottleneck: int = 256
  dropout: float = 0.5


class PCBHead(PartClassifiers):
  """PCB: P part features (retrieval and triplet), dropout, per-part classifiers.

  A PartClassifiers (same parameter names, so older checkpoints restore) plus
  the part pooling and the dropout on the pooled features.
  """

  def __init__(self, config: ModelConfig, in_features: int, num_classes: int, *,
               rngs: nnx.Rngs):
    super().__init__(config.parts, in_features, num_classes, config.bottleneck,
                     config.dropout, config.backbone.dtype, rngs=rngs)
    # Dropout draws from the rngs given at call time (a key per step), so that a
    # training step is a pure function of (state, batch, step) and resumes exactly.
    self.feature_dropout = nnx.Dropout(config.dropout)

  def pool(self, feature_map: jax.Array) -> jax.Array:
    """[B, h, w, C] -> float32 [B, P, C] part features (what the triplet loss compares)."""
    return part_pool(feature_map, self.parts).astype(jnp.float32)

  def retrieval(self, pooled: jax.Array) -> jax.Array:
    """[B, P, C] -> [B, P, C]: PCB retrieves with the pooled part features themselves."""
    return pooled

  def __call__(self, pooled: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    """[B, P, C] -> logits [B, P, num_classes] (float32)."""
    dropped = self.feature_dropout(pooled, rngs=rngs).astype(self.dtype)
    return super().__call__(dropped, rngs=rngs)


class BNNeckHead(nnx.Module):
  """BNNeck (Luo et al. 2019): global average pooling -> BatchNorm -> Linear, no biases.

  The pre-BN pooled feature f_t feeds the triplet loss, the BN feature f_i the
  classifier and retrieval. The BN has no shift (beta fixed at 0, as the paper
  freezes its bias) and the classifier no bias; BN scale starts at 1, classifier
  weights ~ N(0, 0.001^2) (the paper's code).
  """

  def __init__(self, config: ModelConfig, in_features: int, num_classes: int, *,
               rngs: nnx.Rngs):
    if config.parts != 1:
      raise ValueError(f"the bnneck head pools globally: model parts must be 1, got "
                       f"{config.parts}")
    self.dtype = config.backbone.dtype
    self.bn = nnx.BatchNorm(in_features, use_bias=False, momentum=0.9, epsilon=1e-5,
                            dtype=self.dtype, rngs=rngs)
    self.classifier = nnx.Linear(in_features, num_classes, use_bias=False, dtype=self.dtype,
                                 kernel_init=nnx.initializers.normal(0.001), rngs=rngs)

  def pool(self, feature_map: jax.Array) -> jax.Array:
    """[B, h, w, C] -> float32 [B, 1, C] global average (the triplet feature f_t)."""
    return feature_map.astype(jnp.float32).mean(axis=(1, 2))[:, None, :]

  def retrieval(self, pooled: jax.Array) -> jax.Array:
    """[B, 1, C] -> float32 [B, 1, C] BN feature f_i (running statistics in eval mode)."""
    return self.bn(pooled[:, 0].astype(self.dtype)).astype(jnp.float32)[:, None, :]

  def __call__(self, pooled: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    """[B, 1, C] -> logits [B, 1, num_classes] (float32)."""
    del rngs  # no dropout
    f_i = self.bn(pooled[:, 0].astype(self.dtype))
    return self.classifier(f_i).astype(jnp.float32)[:, None, :]


# config.model.head chooses one: (config, backbone channels, classes, rngs=) -> head.
HEADS = {"pcb": PCBHead, "bnneck": BNNeckHead}


class ReIDModel(nnx.Module):
  """A backbone of BACKBONES (ResNet, MobileNetV2) + a head of HEADS (PCB parts or BNNeck).

  ``__call__`` gives (logits [B, P, classes], pooled features [B, P, C]), the pooled
  features being what the triplet loss compares; ``features`` gives the retrieval
  features [B, P, C] (what extraction keeps, before normalisation).
  """

  def __init__(self, config: ModelConfig, num_classes: int, *, rngs: nnx.Rngs):
    if config.head not in HEADS:
      raise ValueError(f"model head must be one of {sorted(HEADS)}, got {config.head!r}")
    self.config = config
    kinds = {c: module for c, module in BACKBONES.values()}
    if type(config.backbone) not in kinds:
      raise ValueError(f"model backbone config must be one of {[c.__name__ for c in kinds]}, "
                       f"got {type(config.backbone).__name__}")
    self.backbone = kinds[type(config.backbone)](config.backbone, rngs=rngs)
    self.head = HEADS[config.head](config, config.backbone.out_channels, num_classes, rngs=rngs)

  def features(self, images: jax.Array) -> jax.Array:
    """[B, H, W, 3] -> float32 [B, P, C] retrieval features."""
    return self.head.retrieval(self.head.pool(self.backbone(images)))

  def __call__(self, images: jax.Array, rngs: nnx.Rngs | None = None
               ) -> tuple[jax.Array, jax.Array]:
    pooled = self.head.pool(self.backbone(images))
    return self.head(pooled, rngs=rngs), pooled


def count_params(model: nnx.Module) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
