"""The convolution, max-pool and BatchNorm of jreid's backbones: XLA's, or the CPU's
formulation.

``Conv`` is a k x k convolution without bias, stride s, symmetric padding (k - 1) // 2,
with ``nnx.Conv``'s parameter (``kernel`` [k, k, cin, cout]) and attributes
(``strides``, ``padding``, ``feature_group_count``), so checkpoints, the ImageNet
conversion and the ONNX export read it as one. ``impl`` chooses how it is computed:

- "xla": ``lax.conv_general_dilated`` (cuDNN on GPUs, the TPU's convolution units);
- "matmul": 1x1 convolutions as one matrix product [B h w, cin] x [cin, cout] (of the
  strided input when s > 1), the others as "xla". XLA:CPU runs these products
  faster than its 1x1 convolutions, forward and backward, while its k x k
  convolutions beat every matrix-product form of them (``conv_matmul``'s im2col,
  per-tap products). The 1x1 kernel gradient is ``pointwise``'s, and ``max_pool``'s
  gradient is taken by per-tap selects. On a CPU a ResNet's steps are also compiled
  with ``compiler_options`` (``resnet.BackboneConfig.compiler_options``): XLA:CPU then
  computes the k x k convolutions with its multi-threaded Eigen kernel instead of
  YNNPACK's, 1.1-3.6x faster for each of ResNet-18's (forward and both gradients; the
  64-channel layers most). ``BatchNorm``'s training gradient is the closed form from its
  input (``batch_norm_apply``), which keeps XLA:CPU from writing x - mean out for every
  activation. ``pointwise``, ``max_pool``'s gradient and ``batch_norm_apply`` are custom
  VJPs: reverse-mode only. ``docs/cpu_training.md`` has the measurements;
- "auto": "matmul" on CPUs, "xla" on every other backend (``conv_impl``).

The two differ only in floating-point rounding: the order of the sums, and BatchNorm's
gradient in its closed form.
"""

from __future__ import annotations

import functools

from absl import logging
import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes
from flax.nnx.nn import normalization  # _compute_stats: nnx.BatchNorm's statistics
from jax.sharding import PartitionSpec as P

CONV_IMPLS = ("auto", "xla", "matmul")

# XLA:CPU's library fusions (YNNPACK) without its convolutions: the default list
# (dots, convolutions, reductions) less LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION, so
# convolutions go to XLA's own multi-threaded Eigen kernel. jaxlib 0.10.2's names.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def conv_impl(name: str, backend: str | None = None) -> str:
  """"xla" or "matmul": ``name``, with "auto" resolved for ``backend`` (default: JAX's)."""
  if name not in CONV_IMPLS:
    raise ValueError(f"model.conv={name!r}: expected one of {CONV_IMPLS}")
  if name != "auto":
    return name
  return "matmul" if (backend or jax.default_backend()) == "cpu" else "xla"


def compiler_options(impl: str, backend: str | None = None) -> dict[str, str]:
  """XLA compile options for a jitted step that runs a model built with conv ``impl``:
  ``CPU_COMPILER_OPTIONS`` where ``impl`` resolves to "matmul" on a CPU backend
  (default: JAX's), else none. An XLA that does not know the option (another jaxlib)
  gets none, with one warning."""
  backend = backend or jax.default_backend()
  if conv_impl(impl, backend) != "matmul" or backend != "cpu":
    return {}
  return dict(CPU_COMPILER_OPTIONS) if _cpu_accepts_options() else {}


@functools.cache
def _cpu_accepts_options() -> bool:
  try:
    x = jax.device_put(jnp.float32(0), jax.local_devices(backend="cpu")[0])
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(x).compile()
    return True
  except jax.errors.JaxRuntimeError as e:  # "No such compile option", or a bad value
    logging.warning("model.conv: this XLA:CPU does not take %s (%s); its convolutions "
                    "keep XLA's default kernels", CPU_COMPILER_OPTIONS, e)
    return False


def shifted_taps(x: jax.Array, k: int, stride: int, pad: int,
                 fill: float = 0.0) -> list[jax.Array]:
  """The k^2 shifted, strided views of x padded by ``pad`` (with ``fill``), in (dy, dx)
  order: [B, H, W, C] -> k^2 x [B, (H + 2 pad - k) // s + 1, (W + 2 pad - k) // s + 1, C]
  (what a k x k window at stride s reads, one tap at a time)."""
  if pad:
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
  b, h, w, c = x.shape
  ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
  return [jax.lax.slice(x, (0, dy, dx, 0), (b, dy + (ho - 1) * stride + 1,
                                            dx + (wo - 1) * stride + 1, c),
                        (1, stride, stride, 1))
          for dy in range(k) for dx in range(k)]


def conv_matmul(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """k x k convolution as one matrix product: [B, H, W, cin], [k, k, cin, cout] ->
  [B, (H + 2 pad - k) // s + 1, (W + 2 pad - k) // s + 1, cout] (no bias).

  For k > 1 the k^2 ``shifted_taps`` are laid side by side (im2col,
  [B, ho, wo, k^2 cin]) and multiplied by the kernel reshaped to [k^2 cin, cout]
  (what ``benchmarks/conv_kernels.py`` times against XLA's).
  """
  k, _, cin, cout = kernel.shape
  taps = shifted_taps(x, k, stride, pad)
  if k == 1:
    b, h, w, _ = taps[0].shape
    return pointwise(taps[0].reshape(b * h * w, cin), kernel.reshape(cin, cout)).reshape(
        b, h, w, cout)
  patches = jnp.concatenate(taps, axis=-1)
  return jnp.einsum("bhwc,cd->bhwd", patches, kernel.reshape(k * k * cin, cout))


@jax.custom_vjp
def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """[n, cin] x [cin, cout] -> [n, cout]: a 1x1 convolution over n pixels, whose kernel
  gradient is computed as the product that transposes the narrower of x and the
  cotangent. (XLA:CPU's matrix product wants its right operand contracted on the minor
  dimension, so the kernel gradient x^T g copies one of them transposed: left to itself
  it copies g, 4x wider than x in a bottleneck's expanding 1x1 convolution; that
  copy ran 2-4.5x slower than the product itself. Either product gives the same
  kernel gradient.)"""
  return jnp.dot(x, kernel)


def _pointwise_fwd(x, kernel):
  return pointwise(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, g):
  x, kernel = residuals
  dx = jax.lax.dot_general(g, kernel, (((1,), (1,)), ((), ())))
  contract = (((0,), (0,)), ((), ()))
  # The kernel gradient sums over the pixels, which a mesh may shard: laid out as the
  # kernel (as JAX's own transpose of the product does).
  placed = jax.typeof(kernel).sharding
  spec = (tuple(placed.spec) + (None, None))[:2]
  like = (lambda order: None) if placed.mesh.empty else (
      lambda order: placed.update(spec=P(*(spec[i] for i in order))))
  if kernel.shape[1] > kernel.shape[0]:  # cout > cin: x, the narrower, is the one copied
    dk = jax.lax.dot_general(g, x, contract, out_sharding=like((1, 0))).T
  else:
    dk = jax.lax.dot_general(x, g, contract, out_sharding=like((0, 1)))
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


class Conv(nnx.Module):
  """k x k convolution, stride s, padding (k - 1) // 2, no bias: [B, H, W, cin] ->
  [B, (H - 1) // s + 1, (W - 1) // s + 1, cout] for odd k (He-normal fan-out init)."""

  def __init__(self, cin: int, cout: int, k: int, stride: int, dtype, rngs: nnx.Rngs,
               impl: str = "auto"):
    init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
    self.kernel = nnx.Param(init(rngs.params(), (k, k, cin, cout), jnp.float32))
    pad = (k - 1) // 2
    self.strides, self.padding, self.feature_group_count = (stride, stride), ((pad, pad),) * 2, 1
    conv_impl(impl)  # a known name
    self.dtype, self.impl = dtype, impl

  def __call__(self, x: jax.Array) -> jax.Array:
    x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
    stride, pad = self.strides[0], self.padding[0][0]
    if kernel.shape[0] == 1 and conv_impl(self.impl) == "matmul":
      return conv_matmul(x, kernel, stride, pad)
    return jax.lax.conv_general_dilated(x, kernel, self.strides, self.padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def max_pool(x: jax.Array, k: int, stride: int, pad: int, impl: str = "auto") -> jax.Array:
  """k x k max-pool, stride s, padded by ``pad`` with -inf: [B, H, W, C] ->
  [B, (H + 2 pad - k) // s + 1, (W + 2 pad - k) // s + 1, C], ``nnx.max_pool``'s values.

  With ``impl`` "matmul" (``conv_impl``) its gradient is ``_max_pool_taps``'s, which
  XLA:CPU computes about 4x faster than the arg-max indices and scatter of
  ``nnx.max_pool``'s; the same gradient (each window's to its first maximum in (dy, dx)
  order), summed in another order. "xla": ``nnx.max_pool``."""
  if conv_impl(impl) == "matmul":
    return _max_pool_taps(x, k, stride, pad)
  return nnx.max_pool(x, (k, k), (stride, stride), padding=((pad, pad), (pad, pad)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_taps(x, k, stride, pad):
  return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, (1, k, k, 1),
                               (1, stride, stride, 1), ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _max_pool_taps_fwd(x, k, stride, pad):
  y = _max_pool_taps(x, k, stride, pad)
  return y, (x, y)


def _max_pool_taps_bwd(k, stride, pad, residuals, g):
  """Each window's gradient to its first tap equal to the window's maximum: per tap, a
  select, and a strided pad back to the padded input's grid; the k^2 of them summed."""
  x, y = residuals
  b, h, w, c = x.shape
  hp, wp = h + 2 * pad, w + 2 * pad
  ho, wo = y.shape[1], y.shape[2]
  zero = jnp.zeros((), g.dtype)
  taken = jnp.zeros(y.shape, bool)
  dx = None
  for i, tap in enumerate(shifted_taps(x, k, stride, pad, fill=-jnp.inf)):
    dy, dxx = divmod(i, k)
    hit = (tap == y) & ~taken
    taken = taken | hit
    spread = jax.lax.pad(jnp.where(hit, g, zero), zero, (
        (0, 0, 0), (dy, hp - dy - (ho - 1) * stride - 1, stride - 1),
        (dxx, wp - dxx - (wo - 1) * stride - 1, stride - 1), (0, 0, 0)))
    dx = spread if dx is None else dx + spread
  return (dx[:, pad:pad + h, pad:pad + w, :],)


_max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)


class BatchNorm(nnx.BatchNorm):
  """``nnx.BatchNorm`` over the channels of [B, H, W, C] (its parameters, statistics,
  values and eval mode); with ``impl`` "matmul" (``conv_impl``) its training-mode
  gradient is ``batch_norm_apply``'s, which reads the input again instead of keeping
  x - mean: XLA:CPU otherwise writes x - mean out in full in the forward pass for the
  backward pass's reduction, a write of every activation that PyTorch's BatchNorm does
  not make. The same gradient, its sums in another order."""

  def __init__(self, num_features: int, *, impl: str = "auto", **kwargs):
    super().__init__(num_features, **kwargs)
    conv_impl(impl)  # a known name
    self.impl = impl

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    running = self.use_running_average if use_running_average is None else use_running_average
    if (running or mask is not None or conv_impl(self.impl) != "matmul" or x.ndim != 4
        or self.axis_name is not None or self.axis not in (-1, 3, (-1,), (3,))
        or self.scale is None or self.bias is None):
      return super().__call__(x, use_running_average, mask=mask)
    x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
    # nnx.BatchNorm's own statistics and running averages, then its normalisation with
    # batch_norm_apply's gradient, which holds the statistics' share of x's.
    mean, var = normalization._compute_stats(x, (0, 1, 2), dtype=self.dtype,
                                             use_fast_variance=self.use_fast_variance)
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
    y = batch_norm_apply(x, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var), scale,
                         bias, self.epsilon)
    return y.astype(dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def batch_norm_apply(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array,
                     bias: jax.Array, epsilon: float) -> jax.Array:
  """Training-mode BatchNorm of [B, H, W, C] with its batch statistics mean and var [C]
  (computed from x): (x - mean) * rsqrt(var + epsilon) * scale + bias, as
  ``nnx.BatchNorm`` computes it. Its gradient (x's through the statistics included, so
  mean and var get none and are passed stopped) is the closed form, from x, mean and var:
  dscale = (sum(g x) - mean sum(g)) * r, dbias = sum(g),
  dx = scale r (g - dbias / n - (x - mean) r dscale / n), r = rsqrt(var + epsilon), n = B H W."""
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias


def _batch_norm_apply_fwd(x, mean, var, scale, bias, epsilon):
  return batch_norm_apply(x, mean, var, scale, bias, epsilon), (x, mean, var, scale)


def _batch_norm_apply_bwd(epsilon, residuals, g):
  x, mean, var, scale = residuals
  n = x.shape[0] * x.shape[1] * x.shape[2]
  r = jax.lax.rsqrt(var + epsilon)
  dbias = g.sum((0, 1, 2))
  dscale = ((g * x).sum((0, 1, 2)) - mean * dbias) * r
  dx = (scale * r) * (g - dbias / n - (x - mean) * (r * dscale / n))
  zero = jnp.zeros_like(mean)
  return dx.astype(x.dtype), zero, zero, dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_apply.defvjp(_batch_norm_apply_fwd, _batch_norm_apply_bwd)
