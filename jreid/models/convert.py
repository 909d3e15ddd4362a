"""ImageNet initialisation from a torchvision or timm ResNet checkpoint file.

Reads ``.safetensors`` (parsed here, no torch needed) or ``.npz`` of the same
state dict, converts names (``layer2.0.downsample.1.running_var`` ->
``backbone.layers.1.0.downsample.bn.var``), layouts (OIHW -> HWIO) and BatchNorm
statistics, and writes them into a ``ReIDModel``'s backbone. Any tensor that
does not map, or maps with the wrong shape, is an error that lists them all.
"""

from __future__ import annotations

import json
import re
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
                       "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
# Tensors a classification checkpoint has that a ReID backbone does not use.
IGNORED = re.compile(r"^(fc|head\.fc|classifier)\.(weight|bias)$|num_batches_tracked$")
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


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.keys()}
  raise ValueError(f"{path!r}: expected a .safetensors or .npz ResNet state dict")


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


def _leaf(prefix: tuple, field: str):
  if prefix[-1].startswith("conv") and field == "weight":
    return prefix + ("kernel",), "conv"
  if prefix[-1].startswith("bn") and field in _BN:
    return prefix + (_BN[field],), "bn"
  return None


def convert(state_dict: dict[str, np.ndarray]) -> tuple[dict[tuple, np.ndarray], list[str]]:
  """{torch name: array} -> ({NNX path: array in Flax layout}, ignored names)."""
  out, ignored, unknown = {}, [], []
  for name, value in state_dict.items():
    if IGNORED.search(name):
      ignored.append(name)
      continue
    mapped = torch_name_to_path(name)
    if mapped is None:
      unknown.append(name)
      continue
    path, kind = mapped
    value = np.asarray(value, np.float32)
    out[path] = value.transpose(2, 3, 1, 0) if kind == "conv" else value
  if unknown:
    raise ValueError(f"{len(unknown)} tensors do not map to the ResNet backbone: {unknown}")
  return out, ignored


def load_imagenet_backbone(model: nnx.Module, path: str) -> list[str]:
  """Writes the backbone weights of ``path`` into ``model`` in place.

  Returns the names that were deliberately ignored (the ImageNet classifier).
  Raises:
    ValueError: listing every tensor that does not map or whose shape differs, and
      every backbone parameter the file lacks.
  """
  converted, ignored = convert(read_state_dict(path))
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
