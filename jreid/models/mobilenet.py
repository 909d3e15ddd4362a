"""Flax NNX MobileNetV2 backbone (torchvision's ``mobilenet_v2(...).features``).

Sandler et al. 2018, as torchvision builds it: a 3x3/2 stem convolution, 17
inverted residual blocks (1x1 expansion, 3x3 depthwise, 1x1 linear projection,
each with BatchNorm; ReLU6 after the first two; the identity added when stride is 1
and the channels agree) and a 1x1 convolution to 1,280 channels, all without
biases. Images are NHWC float; the backbone returns the last feature map
[B, h, w, C] (C = ``out_channels``, 1,280 at width 1). Padding is explicit and
symmetric as in PyTorch, so ImageNet weights converted from torch files
(``jreid.models.convert``) give torchvision's activations.

``last_stride=1`` keeps the resolution of the last downsampling stage (block 14,
160 channels): output stride 16 instead of 32, as ResNet's last-stride option.

The 3x3 depthwise convolutions are computed as nine shifted, per-channel scaled
copies of the padded input, summed (``DepthwiseConv``): the same products and sums
as XLA's grouped convolution, which XLA:CPU runs 7-9x slower, forward and backward.
The other convolutions are ``layers.Conv`` (1x1 ones as matrix products on CPUs:
``conv``), the BatchNorms ``layers.BatchNorm`` (its gradient in closed form on CPUs).
Parameters keep ``nnx.Conv``'s names and layouts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jreid.models import layers

# (expansion t, channels c, blocks n, stride s) of each stage (torchvision, the paper).
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS, LAST_CHANNELS = 32, 1280
LAST_STRIDE_STAGE = 5  # the 160-channel stage: its stride is last_stride
# The expansion t of each inverted residual, features[1] to features[17].
BLOCK_EXPANSIONS = tuple(t for t, _, n, _ in INVERTED_RESIDUAL_SETTING for _ in range(n))


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's ``_make_divisible``: nearest multiple of divisor, at most 10% below v."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


@dataclasses.dataclass(frozen=True)
class MobileNetV2Config:
  """Attributes:
    width_mult: channel multiplier (1.0 for the ImageNet model; smaller for tests).
    last_stride: stride of the last downsampling stage (2 as torchvision; 1 for ReID).
    dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    conv: how the dense convolutions are computed, a ``layers.CONV_IMPLS`` name.
  """
  width_mult: float = 1.0
  last_stride: int = 1
  dtype: Any = jnp.float32
  conv: str = "auto"

  def compiler_options(self) -> dict[str, str]:
    """XLA's defaults: its one dense k x k convolution, the stem, leaves YNNPACK's kernel
    for no gain, and the whole step ran 1.24x slower at 256x128 with
    ``layers.compiler_options`` (``docs/cpu_training.md``)."""
    return {}

  @property
  def out_channels(self) -> int:
    return make_divisible(LAST_CHANNELS * max(1.0, self.width_mult))


class DepthwiseConv(nnx.Module):
  """k x k depthwise convolution (one filter per channel), no bias, symmetric padding.

  kernel: [k, k, 1, C], the layout of ``nnx.Conv(C, C, feature_group_count=C)``, so
  checkpoints, the ImageNet conversion and the ONNX export read it as one; ``strides``,
  ``padding`` and ``feature_group_count`` as that module's attributes.
  """

  def __init__(self, channels: int, k: int, stride: int, dtype, rngs: nnx.Rngs):
    pad = (k - 1) // 2
    init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
    self.kernel = nnx.Param(init(rngs.params(), (k, k, 1, channels), jnp.float32))
    self.strides, self.padding = (stride, stride), ((pad, pad), (pad, pad))
    self.feature_group_count, self.dtype = channels, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, (H - 1) // s + 1, (W - 1) // s + 1, C] (odd k)."""
    k, s, pad = self.kernel.shape[0], self.strides[0], self.padding[0][0]
    kernel = self.kernel[...].astype(self.dtype)
    out = None
    for i, tap in enumerate(layers.shifted_taps(x.astype(self.dtype), k, s, pad)):
      tap = tap * kernel[i // k, i % k, 0]
      out = tap if out is None else out + tap
    return out


def _bn(c, dtype, rngs, impl):
  return layers.BatchNorm(c, impl=impl, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


class ConvBNReLU6(nnx.Module):
  """Convolution (depthwise with ``depthwise``), BatchNorm, ReLU6 (torchvision's
  ``Conv2dNormActivation``)."""

  def __init__(self, cin, cout, k, stride, dtype, rngs, impl, depthwise=False):
    self.conv = (DepthwiseConv(cin, k, stride, dtype, rngs) if depthwise
                 else layers.Conv(cin, cout, k, stride, dtype, rngs, impl))
    self.bn = _bn(cout, dtype, rngs, impl)

  def __call__(self, x):
    return jax.nn.relu6(self.bn(self.conv(x)))


class InvertedResidual(nnx.Module):
  """[1x1 expand, BN, ReLU6] (t > 1), 3x3 depthwise, BN, ReLU6, 1x1 project, BN (+ x)."""

  def __init__(self, cin, cout, stride, expand_ratio, dtype, rngs, impl):
    hidden = int(round(cin * expand_ratio))
    self.expand = (ConvBNReLU6(cin, hidden, 1, 1, dtype, rngs, impl) if expand_ratio != 1
                   else None)
    self.depthwise = ConvBNReLU6(hidden, hidden, 3, stride, dtype, rngs, impl, depthwise=True)
    self.project = layers.Conv(hidden, cout, 1, 1, dtype, rngs, impl)
    self.project_bn = _bn(cout, dtype, rngs, impl)
    self.residual = stride == 1 and cin == cout

  def __call__(self, x):
    y = self.expand(x) if self.expand is not None else x
    y = self.project_bn(self.project(self.depthwise(y)))
    return x + y if self.residual else y


class MobileNetV2(nnx.Module):
  """[B, H, W, 3] -> [B, H/s, W/s, out_channels]; s = 32, or 16 with ``last_stride=1``.

  ``features`` holds torchvision's 19 modules in its order: features[0] the stem,
  features[1..17] the inverted residuals, features[18] the last 1x1 convolution.
  """

  def __init__(self, config: MobileNetV2Config, *, rngs: nnx.Rngs):
    self.config = config
    dt = config.dtype
    cin = make_divisible(STEM_CHANNELS * config.width_mult)
    self.features = nnx.List([ConvBNReLU6(3, cin, 3, 2, dt, rngs, config.conv)])
    for stage, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
      cout = make_divisible(c * config.width_mult)
      if stage == LAST_STRIDE_STAGE:
        s = config.last_stride
      for i in range(n):
        self.features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, dt, rngs,
                                              config.conv))
        cin = cout
    self.features.append(ConvBNReLU6(cin, config.out_channels, 1, 1, dt, rngs, config.conv))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.config.dtype)
    for f in self.features:
      x = f(x)
    return x
