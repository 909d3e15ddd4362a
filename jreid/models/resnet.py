"""Flax NNX ResNet-18/34/50 backbones (torchvision layout), last-stage stride option.

Images are NHWC float; the backbone returns the last feature map [B, h, w, C]
(C = 512 for ResNet-18/34, 2048 for ResNet-50). Padding is explicit and
symmetric as in torchvision, so ImageNet weights converted from PyTorch
(``jreid.models.convert``) give the same activations. Bottleneck blocks put the
stride on the 3x3 convolution (torchvision's ResNet v1.5). Convolutions are
``layers.Conv`` and the max-pool ``layers.max_pool`` (on CPUs computed for XLA:CPU's
kernels: ``conv``, ``layers``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jreid.models import layers

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """depth: 18, 34 or 50 (or 0 with ``stage_blocks`` for tiny test models).

  Attributes:
    depth: ResNet depth.
    last_stride: stride of the last stage (1 for PCB, as the reference).
    width: channels of the stem (64 in the real ResNets; smaller for tests).
    stage_blocks: blocks per stage, overriding the depth's.
    bottleneck: bottleneck blocks (ResNet-50) or basic blocks (18/34).
    dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    conv: how convolutions and the max-pool are computed, a ``layers.CONV_IMPLS`` name
      ("auto": on CPUs 1x1 ones as matrix products, the others on XLA's own kernel
      (``compiler_options``), the max-pool's gradient by taps; XLA's elsewhere).
  """
  depth: int = 50
  last_stride: int = 1
  width: int = 64
  stage_blocks: tuple[int, ...] | None = None
  bottleneck: bool | None = None
  dtype: Any = jnp.float32
  conv: str = "auto"

  def compiler_options(self) -> dict[str, str]:
    """XLA compile options of the steps that run this backbone (``layers.compiler_options``:
    on a CPU its k x k convolutions on XLA's own kernel)."""
    return layers.compiler_options(self.conv)

  @property
  def blocks(self) -> tuple[int, ...]:
    return tuple(self.stage_blocks) if self.stage_blocks else STAGE_BLOCKS[self.depth]

  @property
  def uses_bottleneck(self) -> bool:
    return self.depth >= 50 if self.bottleneck is None else self.bottleneck

  @property
  def out_channels(self) -> int:
    return self.width * 8 * (4 if self.uses_bottleneck else 1)


def _bn(c, dtype, rngs, impl, zero=False):
  return layers.BatchNorm(c, impl=impl, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs,
                          scale_init=nnx.initializers.zeros if zero else nnx.initializers.ones)


class Downsample(nnx.Module):
  """1x1 convolution + BatchNorm on the shortcut (torchvision's ``downsample``)."""

  def __init__(self, cin, cout, stride, dtype, rngs, impl):
    self.conv = layers.Conv(cin, cout, 1, stride, dtype, rngs, impl)
    self.bn = _bn(cout, dtype, rngs, impl)

  def __call__(self, x):
    return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, cin, width, stride, dtype, rngs, impl):
    self.conv1 = layers.Conv(cin, width, 3, stride, dtype, rngs, impl)
    self.bn1 = _bn(width, dtype, rngs, impl)
    self.conv2 = layers.Conv(width, width, 3, 1, dtype, rngs, impl)
    self.bn2 = _bn(width, dtype, rngs, impl)
    self.downsample = (Downsample(cin, width, stride, dtype, rngs, impl)
                       if stride != 1 or cin != width else None)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return nnx.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin, width, stride, dtype, rngs, impl):
    cout = width * 4
    self.conv1 = layers.Conv(cin, width, 1, 1, dtype, rngs, impl)
    self.bn1 = _bn(width, dtype, rngs, impl)
    self.conv2 = layers.Conv(width, width, 3, stride, dtype, rngs, impl)
    self.bn2 = _bn(width, dtype, rngs, impl)
    self.conv3 = layers.Conv(width, cout, 1, 1, dtype, rngs, impl)
    self.bn3 = _bn(cout, dtype, rngs, impl)
    self.downsample = (Downsample(cin, cout, stride, dtype, rngs, impl)
                       if stride != 1 or cin != cout else None)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return nnx.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nnx.Module):
  """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) and four stages: [B,H,W,3] -> [B,H/s,W/s,C].

  The output stride s is 32, or 16 with ``last_stride=1``.
  """

  def __init__(self, config: BackboneConfig, *, rngs: nnx.Rngs):
    self.config = config
    dt = config.dtype
    self.conv1 = layers.Conv(3, config.width, 7, 2, dt, rngs, config.conv)
    self.bn1 = _bn(config.width, dt, rngs, config.conv)
    block = Bottleneck if config.uses_bottleneck else BasicBlock
    cin = config.width
    self.layers = nnx.List()
    for i, n in enumerate(config.blocks):
      width = config.width * (2 ** i)
      stride = 1 if i == 0 else (config.last_stride if i == 3 else 2)
      blocks = nnx.List()
      for j in range(n):
        blocks.append(block(cin, width, stride if j == 0 else 1, dt, rngs, config.conv))
        cin = width * block.expansion
      self.layers.append(blocks)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.config.dtype)
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = layers.max_pool(x, 3, 2, 1, self.config.conv)
    for blocks in self.layers:
      for b in blocks:
        x = b(x)
    return x
