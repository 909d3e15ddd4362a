"""PCB (part-based) and global-pooling heads, and the ReID model that joins them.

PCB (Sun et al. 2018, as ``ST_REID_REFERENCE.md`` section 6): the feature map is
average-pooled into P horizontal parts (PyTorch ``AdaptiveAvgPool2d((P, 1))``
bins), dropout 0.5, then per part Linear C->256, BatchNorm, Dropout 0.5,
Linear 256->num_classes. The P part classifiers are held as stacked parameters
and applied with one einsum; BatchNorm over the [P * 256] features keeps
per-part statistics exactly as P separate BatchNorm1d layers would.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jreid.models import resnet


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
  """backbone: the ResNet; parts: 6 for PCB, 1 for a global-pooling head."""
  backbone: resnet.BackboneConfig = resnet.BackboneConfig()
  parts: int = 6
  bottleneck: int = 256
  dropout: float = 0.5


class ReIDModel(nnx.Module):
  """ResNet backbone + part (or global) pooling + per-part classifiers.

  ``__call__`` gives (logits [B, P, classes], pooled features [B, P, C]);
  ``features`` gives the pooled features alone (what extraction keeps).
  """

  def __init__(self, config: ModelConfig, num_classes: int, *, rngs: nnx.Rngs):
    self.config = config
    self.backbone = resnet.ResNet(config.backbone, rngs=rngs)
    # Dropout draws from the rngs given at call time (a key per step), so that a
    # training step is a pure function of (state, batch, step) and resumes exactly.
    self.feature_dropout = nnx.Dropout(config.dropout)
    self.head = PartClassifiers(config.parts, config.backbone.out_channels, num_classes,
                                config.bottleneck, config.dropout, config.backbone.dtype,
                                rngs=rngs)

  def features(self, images: jax.Array) -> jax.Array:
    """[B, H, W, 3] -> float32 [B, P, C] part features."""
    return part_pool(self.backbone(images), self.config.parts).astype(jnp.float32)

  def __call__(self, images: jax.Array, rngs: nnx.Rngs | None = None
               ) -> tuple[jax.Array, jax.Array]:
    feats = self.features(images)
    dropped = self.feature_dropout(feats, rngs=rngs).astype(self.config.backbone.dtype)
    return self.head(dropped, rngs=rngs), feats


def part_losses(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy of each part, mean over the batch: [B, P, K], [B] -> [P]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(logp, labels[:, None, None], axis=-1)[..., 0]
  return -picked.mean(axis=0)


def count_params(model: nnx.Module) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
