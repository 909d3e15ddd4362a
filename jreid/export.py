"""Deployment export of the visual model: an ONNX graph and a serialized jax.export artifact.

Both take what extraction receives: a batch of **uint8 RGB crops, NHWC, at the
transfer size** [B, h, w, 3] (B dynamic; Market-1501's 128 x 64 box, or the
workdir's ``data.transfer_size``), and return the retrieval feature exactly as
extraction computes it (``features.flip_features``): the bicubic resize to the
trained size H x W (``augment.bicubic_weights``, two matrix products), clip,
ImageNet normalisation, the model's features of the image plus those of its
horizontal flip, each part L2-normalised, then the whole vector
(``scoring.l2_normalise_features``). Output: float32 [B, P * C] with unit norm,
so the cosine similarity of two images is the dot product of their features.

The ONNX graph is written directly with the ``onnx`` package from the NNX model's
parameters (opset 17): the resize as two MatMuls with the bicubic weight matrices,
BatchNorm folded into the preceding convolution (grouped for MobileNetV2's
depthwise ones), Relu, Clip (ReLU6), MaxPool, Add, ReduceMean part pooling, the BNNeck BatchNorm as Mul/Add,
ReduceL2 normalisation. Why not a converter: jax2onnx versions that accept
orbax-checkpoint 0.12.8 (<= 0.13.0; later ones require orbax-checkpoint<0.11.37)
fail on this model with flax 0.12.8 (their nnx.Conv shim passes flax's list
padding as a jaxpr parameter, unhashable under jax >= 0.7, and their
nnx.max_pool shim rejects positional arguments). See docs/deploy.md.

The ``export`` job of ``jreid.jobs`` restores a trained workdir's model
(``jobs.restore_trained``: its training settings, ``train.create_train_state`` and
the checkpoint restore) and calls ``write_exports`` (``<workdir>/export``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jreid import augment
from jreid import features as features_lib
from jreid import files
from jreid import scoring
from jreid.models import heads
from jreid.models import layers
from jreid.models import mobilenet
from jreid.models import resnet

ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "features"


# --- The function both forms compute -------------------------------------------------


def serving_features(model: heads.ReIDModel, images: jax.Array,
                     image_size: Sequence[int]) -> jax.Array:
  """uint8 [B, h, w, 3] crops (RGB, 0..255, at the transfer size) -> float32 [B, P * C]
  normalised features, resized to ``image_size`` inside. The model must be in eval mode."""
  f = features_lib.flip_features(model, images, tuple(image_size))
  return scoring.l2_normalise_parts(f.astype(jnp.float32), jnp)


def check_images(images: Any, input_size: Sequence[int]) -> None:
  """Raises ValueError unless images is uint8 [B, h, w, 3] at input_size (h, w)."""
  shape, dtype = tuple(np.shape(images)), np.dtype(getattr(images, "dtype", None))
  h, w = input_size
  if len(shape) != 4 or shape[1:] != (h, w, 3) or dtype != np.uint8:
    raise ValueError(f"images must be uint8 [batch, {h}, {w}, 3] (RGB, NHWC crops at the "
                     f"transfer size, as extraction reads them); got {dtype} {list(shape)}")


# --- jax.export ------------------------------------------------------------------------


def export_jax(model: heads.ReIDModel, input_size: Sequence[int],
               image_size: Sequence[int]) -> bytes:
  """The serialized ``jax.export`` artifact of serving_features, batch dim symbolic:
  uint8 [batch, *input_size, 3] -> features, resized to ``image_size`` inside.

  Parameters are embedded as constants; the artifact runs on CPU, and on the
  platform it was exported for.
  """
  model.eval()
  graphdef, state = nnx.split(model)

  def fn(images):
    return serving_features(nnx.merge(graphdef, state), images, image_size)

  batch, = jax.export.symbolic_shape("batch")
  h, w = input_size
  platforms = sorted({"cpu", jax.default_backend()})
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(
      jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8))
  return bytes(exported.serialize())


def load_jax_export(blob: bytes) -> Callable[[Any], jax.Array]:
  """images uint8 [B, H, W, 3] -> features, from a serialized artifact; checks the input."""
  exported = jax.export.deserialize(bytearray(blob))
  _, h, w, _ = exported.in_avals[0].shape

  def call(images):
    check_images(images, (h, w))
    return exported.call(jnp.asarray(images))

  return call


# --- ONNX ------------------------------------------------------------------------------


class _Graph:
  """Accumulates ONNX nodes and initializers with unique names."""

  def __init__(self):
    import onnx  # pylint: disable=g-import-not-at-top  (only export needs it)
    self.onnx = onnx
    self.nodes, self.initializers, self._n = [], [], 0

  def name(self, hint: str) -> str:
    self._n += 1
    return f"{hint}_{self._n}"

  def const(self, value: np.ndarray, hint: str) -> str:
    n = self.name(hint)
    self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), n))
    return n

  def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, **attrs) -> str:
    out = self.name(hint or op_type.lower())
    self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], **attrs))
    return out


def _value(v) -> np.ndarray:
  return np.asarray(jax.device_get(v[...]), np.float32)


def _fold_conv_bn(g: _Graph, x: str, conv: layers.Conv | mobilenet.DepthwiseConv, bn: nnx.BatchNorm, hint: str) -> str:
  """Conv (no bias) then eval-mode BatchNorm as one Conv with folded weights and bias."""
  kernel = _value(conv.kernel)  # [kh, kw, cin, cout]
  scale = _value(bn.scale) / np.sqrt(_value(bn.var) + bn.epsilon)
  weight = (kernel * scale).transpose(3, 2, 0, 1)  # [cout, cin, kh, kw]
  bias = (_value(bn.bias) if bn.bias is not None else 0.0) - _value(bn.mean) * scale
  (pt, pb), (pl, pr) = conv.padding
  return g.op("Conv", [x, g.const(weight.astype(np.float32), f"{hint}_w"),
                       g.const(bias.astype(np.float32), f"{hint}_b")], hint,
              kernel_shape=list(kernel.shape[:2]), strides=list(conv.strides),
              pads=[pt, pl, pb, pr], group=int(conv.feature_group_count))


def _relu6(g: _Graph, x: str) -> str:
  return g.op("Clip", [x, g.const(np.float32(0.0), "zero"), g.const(np.float32(6.0), "six")],
              "relu6")


def _block(g: _Graph, x: str, block, hint: str) -> str:
  names = ("1", "2", "3") if isinstance(block, resnet.Bottleneck) else ("1", "2")
  y = x
  for i, k in enumerate(names):
    y = _fold_conv_bn(g, y, getattr(block, f"conv{k}"), getattr(block, f"bn{k}"), f"{hint}_c{k}")
    if i < len(names) - 1:
      y = g.op("Relu", [y])
  shortcut = (_fold_conv_bn(g, x, block.downsample.conv, block.downsample.bn, f"{hint}_down")
              if block.downsample is not None else x)
  return g.op("Relu", [g.op("Add", [y, shortcut])], f"{hint}_out")


def _mobilenet(g: _Graph, x: str, net: mobilenet.MobileNetV2) -> str:
  """NCHW float [N, 3, H, W] -> [N, C, h, w], as mobilenet.MobileNetV2.__call__."""
  for i, f in enumerate(net.features):
    if isinstance(f, mobilenet.ConvBNReLU6):
      x = _relu6(g, _fold_conv_bn(g, x, f.conv, f.bn, f"features{i}"))
      continue
    y = x
    if f.expand is not None:
      y = _relu6(g, _fold_conv_bn(g, y, f.expand.conv, f.expand.bn, f"features{i}_expand"))
    y = _relu6(g, _fold_conv_bn(g, y, f.depthwise.conv, f.depthwise.bn, f"features{i}_dw"))
    y = _fold_conv_bn(g, y, f.project, f.project_bn, f"features{i}_project")
    x = g.op("Add", [x, y], f"features{i}_out") if f.residual else y
  return x


def _backbone(g: _Graph, x: str, net) -> str:
  """NCHW float [N, 3, H, W] -> [N, C, h, w], as the backbone's __call__."""
  if isinstance(net, mobilenet.MobileNetV2):
    return _mobilenet(g, x, net)
  if not isinstance(net, resnet.ResNet):
    raise NotImplementedError(f"ONNX export of backbone {type(net).__name__}")
  x = g.op("Relu", [_fold_conv_bn(g, x, net.conv1, net.bn1, "stem")])
  x = g.op("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
  for i, blocks in enumerate(net.layers):
    for j, b in enumerate(blocks):
      x = _block(g, x, b, f"layer{i + 1}_{j}")
  return x


def _pool_and_retrieve(g: _Graph, x: str, model: heads.ReIDModel, height: int) -> str:
  """[N, C, h, w] -> [N, P, C]: the head's pool then retrieval (eval mode)."""
  rows = g.op("ReduceMean", [x], "rows", axes=[3], keepdims=0)  # [N, C, h]
  head = model.head
  if isinstance(head, heads.PCBHead):
    parts = []
    for i in range(head.parts):  # part_pool's bins: rows floor(i h / P) .. ceil((i + 1) h / P)
      lo, hi = (i * height) // head.parts, -((-(i + 1) * height) // head.parts)
      part = g.op("Slice", [rows, g.const(np.array([lo], np.int64), "lo"),
                            g.const(np.array([hi], np.int64), "hi"),
                            g.const(np.array([2], np.int64), "axis")])
      parts.append(g.op("ReduceMean", [part], "part", axes=[2], keepdims=1))
    pooled = g.op("Concat", parts, "parts", axis=2) if len(parts) > 1 else parts[0]
    return g.op("Transpose", [pooled], "pooled", perm=[0, 2, 1])  # [N, P, C]
  if isinstance(head, heads.BNNeckHead):
    pooled = g.op("ReduceMean", [rows], "global", axes=[2], keepdims=1)  # [N, C, 1]
    bn = head.bn
    scale = _value(bn.scale) / np.sqrt(_value(bn.var) + bn.epsilon)
    shift = -_value(bn.mean) * scale
    y = g.op("Add", [g.op("Mul", [pooled, g.const(scale[:, None].astype(np.float32), "bn_s")]),
                     g.const(shift[:, None].astype(np.float32), "bn_t")])
    return g.op("Transpose", [y], "pooled", perm=[0, 2, 1])  # [N, 1, C]
  raise NotImplementedError(f"ONNX export of head {type(head).__name__}")


def _feature_map_height(model: heads.ReIDModel, image_size: Sequence[int]) -> int:
  h, w = image_size
  out = jax.eval_shape(lambda x: model.backbone(x), jax.ShapeDtypeStruct((1, h, w, 3),
                                                                        jnp.float32))
  return int(out.shape[1])


def export_onnx(model: heads.ReIDModel, input_size: Sequence[int],
                image_size: Sequence[int]) -> bytes:
  """The ONNX model (serialized) of serving_features: uint8 [batch, *input_size, 3] ->
  [batch, D], resized to ``image_size`` inside."""
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import TensorProto  # pylint: disable=g-import-not-at-top
  from onnx import helper  # pylint: disable=g-import-not-at-top
  model.eval()
  h_in, w_in = input_size
  h, w = image_size
  g = _Graph()
  mean = np.asarray(augment.IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
  std = np.asarray(augment.IMAGENET_STD, np.float32).reshape(3, 1, 1)
  x = g.op("Cast", [INPUT_NAME], "float", to=TensorProto.FLOAT)
  x = g.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])  # [B, 3, h_in, w_in]
  if (h_in, w_in) != (h, w):  # augment.resize_bicubic: rows, then columns
    x = g.op("MatMul", [g.const(augment.bicubic_weights(h_in, h), "resize_rows"), x])
    x = g.op("MatMul", [x, g.const(np.ascontiguousarray(augment.bicubic_weights(w_in, w).T),
                                   "resize_cols")], "resized")
  x = g.op("Clip", [x, g.const(np.float32(0.0), "zero"), g.const(np.float32(255.0), "c255")])
  x = g.op("Div", [x, g.const(np.float32(255.0), "c255")])
  x = g.op("Div", [g.op("Sub", [x, g.const(mean, "mean")]), g.const(std, "std")], "normalised")
  flipped = g.op("Slice", [x, g.const(np.array([-1], np.int64), "start"),
                           g.const(np.array([np.iinfo(np.int64).min], np.int64), "end"),
                           g.const(np.array([3], np.int64), "axis"),
                           g.const(np.array([-1], np.int64), "step")], "flipped")
  both = g.op("Concat", [x, flipped], "both", axis=0)  # [2B, 3, H, W]: images, then flips
  fmap = _backbone(g, both, model.backbone)
  pooled = _pool_and_retrieve(g, fmap, model, _feature_map_height(model, image_size))
  parts, channels = jax.eval_shape(model.features, jax.ShapeDtypeStruct((1, h, w, 3),
                                                                        jnp.float32)).shape[1:]
  pair = g.op("Reshape", [pooled, g.const(np.array([2, -1, parts, channels], np.int64), "s")])
  f = g.op("ReduceSum", [pair, g.const(np.array([0], np.int64), "ax0")], "flip_sum",
           keepdims=0)  # [B, P, C]
  floor = g.const(np.float32(1e-12), "eps")
  f = g.op("Div", [f, g.op("Max", [g.op("ReduceL2", [f], axes=[2], keepdims=1), floor])],
           "part_normalised")
  f = g.op("Reshape", [f, g.const(np.array([0, parts * channels], np.int64), "flat")])
  f = g.op("Div", [f, g.op("Max", [g.op("ReduceL2", [f], axes=[1], keepdims=1), floor])])
  g.nodes.append(helper.make_node("Identity", [f], [OUTPUT_NAME]))
  graph = helper.make_graph(
      g.nodes, "jreid_features",
      [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", h_in, w_in, 3])],
      [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                     ["batch", parts * channels])],
      g.initializers)
  proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                            producer_name="jreid")
  proto.ir_version = 8  # readable by onnxruntime >= 1.14
  onnx.checker.check_model(proto)
  return proto.SerializeToString()


# --- The job ---------------------------------------------------------------------------

ONNX_FILE = "model.onnx"
JAX_EXPORT_FILE = "model.jax_export"


def write_exports(model: heads.ReIDModel, input_size: Sequence[int], image_size: Sequence[int],
                  out_dir: str, step: int) -> dict:
  """Writes model.onnx, model.jax_export and export.json to out_dir; returns their description.

  input_size: the transfer size (the crops extraction reads); image_size: the trained size.
  Returns {"onnx": path, "jax_export": path, "step": step, "input": ..., "output": ...}.
  """
  model.eval()
  files.makedirs(out_dir)
  paths = {"onnx": files.join(out_dir, ONNX_FILE),
           "jax_export": files.join(out_dir, JAX_EXPORT_FILE)}
  files.write_bytes(paths["onnx"], export_onnx(model, input_size, image_size))
  files.write_bytes(paths["jax_export"], export_jax(model, input_size, image_size))
  (h_in, w_in), (h, w) = input_size, image_size
  dims = model.config.parts * model.config.backbone.out_channels
  info = dict(paths, step=int(step),
              input=f"uint8 [batch, {h_in}, {w_in}, 3] RGB NHWC crops (the transfer size; "
                    f"resized to {h} x {w} inside, as extraction)",
              output=f"float32 [batch, {dims}] normalised features")
  files.write_json(files.join(out_dir, "export.json"), info)
  return info
