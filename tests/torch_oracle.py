"""PyTorch as the oracle of jreid's torch-file reader and MobileNetV2 conversion.

Runs in a venv with torch and torchvision (never jreid's: ``requirements.txt`` has
no torch), e.g. the benchmarks' ``~/.cache/jreid/torch_venv``:

  python tests/torch_oracle.py save OUT_DIR
      writes real ``torch.save`` files, ``torch_state_zip.pt`` (PyTorch >= 1.6 format) and
      ``torch_state_legacy.pt`` (``_use_new_zipfile_serialization=False``), of one state dict
      (a Conv2d + BatchNorm2d module's own state dict, with its _metadata, plus float32,
      float16, bfloat16, int64, bool tensors, a transposed view, a slice that shares its
      storage, an nn.Parameter, a 0-d tensor, an empty tensor), and
      ``torch_state_expected.npz``: the same tensors as numpy arrays (bfloat16 as its float32
      values). The committed ``tests/fixtures/torch_state_*`` files are its output.
  python tests/torch_oracle.py resnet DEPTH INPUT.npz OUT_DIR
      saves a randomly initialised ``torchvision.models.resnet<DEPTH>()``'s state dict
      with ``torch.save`` as OUT_DIR/resnet.pth (torchvision's own file format, as its
      ImageNet downloads), with running statistics moved off 0 / 1, and writes its
      eval-mode feature map (before the average pool) for INPUT's "x" as
      OUT_DIR/out.npz "y".
  python tests/torch_oracle.py mobilenet WEIGHTS.pt INPUT.npz OUT.npz
      loads WEIGHTS (torchvision's layout, or the flat layout of the original port,
      renamed to torchvision's) into ``torchvision.models.mobilenet_v2().features``
      and writes its eval-mode output for INPUT's "x" (float32 [B, 3, H, W]) as "y".

The CUDA build of torchvision needs its operator schemas defined before import on a
CPU-only torch: ``TORCHVISION_SHIM``, also the reference-parity venvs' sitecustomize.
"""

import collections
import os
import re
import sys

import numpy as np

# The PyTorch venv the torch-oracle tests run this script with (they skip without it).
TORCH_PYTHON = os.environ.get("JREID_TORCH_PYTHON",
                              os.path.expanduser("~/.cache/jreid/torch_venv/bin/python"))


# torchvision's operator schemas, defined only where its own C++ ops cannot load (its CUDA
# wheel beside a CPU torch: torchvision's import then fails registering nms and qnms).
# Where they load (a CPU torchvision, or torch 2.14.1 with torchvision 0.29.1) torchvision
# defines them itself, and defining them first would make its import fail. Also written as
# the reference-parity venvs' sitecustomize.py (``benchmarks/reference_parity.py``).
TORCHVISION_SHIM = '''import glob, importlib.util, os, torch
def _jreid_torchvision_schemas():
  spec = importlib.util.find_spec("torchvision")
  if spec is None:
    return None
  for lib_path in glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so")):
    try:
      torch.ops.load_library(lib_path)
      return None
    except (OSError, RuntimeError):
      pass
  lib = torch.library.Library("torchvision", "FRAGMENT")
  lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  return lib
_jreid_torchvision_lib = _jreid_torchvision_schemas()  # kept alive
'''


def _torch():
  """torch, with torchvision importable (TORCHVISION_SHIM; this module is importable without
  torch: the tests import ``to_torchvision_names``)."""
  if not hasattr(_torch, "shim"):
    _torch.shim = {}
    exec(TORCHVISION_SHIM, _torch.shim)  # pylint: disable=exec-used
  return _torch.shim["torch"]


def state_dict():
  torch = _torch()
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  torch.manual_seed(0)
  # A real module's state dict (torch sets its _metadata by the BUILD opcode), then more.
  sd = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).state_dict()
  assert hasattr(sd, "_metadata")
  sd["conv.weight"] = torch.randn(3, 2, 3, 3, generator=g)
  sd["half"] = torch.randn(5, generator=g).half()
  sd["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
  sd["steps"] = torch.tensor(12345678901, dtype=torch.int64)
  sd["mask"] = torch.tensor([True, False, True])
  sd["transposed"] = base.t()                 # strides (1, 6)
  sd["slice"] = base[1:3, 2:5]                # offset 8 into base's storage
  sd["base"] = base
  sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
  sd["empty"] = torch.zeros(0, 4)
  return sd


def save(out: str) -> None:
  torch = _torch()
  os.makedirs(out, exist_ok=True)
  sd = state_dict()
  torch.save(sd, os.path.join(out, "torch_state_zip.pt"))
  torch.save(sd, os.path.join(out, "torch_state_legacy.pt"), _use_new_zipfile_serialization=False)
  np.savez(os.path.join(out, "torch_state_expected.npz"),
           **{k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy()
              for k, v in sd.items()})
  print(f"wrote {out}: {list(sd)}")


FLAT = {True: {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"},
        False: {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}}


def to_torchvision_names(sd):
  """The flat layout (``features.<i>.conv.<j>.``) renamed to torchvision's nested one."""
  if any(re.search(r"features\.\d+\.conv\.\d+\.\d+\.", k) for k in sd):
    return sd
  out = collections.OrderedDict()
  for k, v in sd.items():
    m = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(\w+)", k)
    if m:
      i = int(m.group(1))
      k = f"features.{i}.conv.{FLAT[i != 1][m.group(2)]}.{m.group(3)}"
    out[k] = v
  return out


def mobilenet(weights: str, inputs: str, out: str) -> None:
  torch = _torch()
  import torchvision  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  sd = to_torchvision_names(torch.load(weights, map_location="cpu", weights_only=True))
  features = torchvision.models.mobilenet_v2().features
  features.load_state_dict({k[len("features."):]: v for k, v in sd.items()})
  features.eval()
  with torch.no_grad():
    y = features(torch.from_numpy(np.load(inputs)["x"]))
  np.savez(out, y=y.numpy())
  print(f"torchvision {torchvision.__version__} mobilenet_v2 features: {tuple(y.shape)}")


def resnet(depth: str, inputs: str, out: str) -> None:
  torch = _torch()
  import torchvision  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(1)
  model = getattr(torchvision.models, f"resnet{depth}")()
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.1, 0.1)
      m.running_var.uniform_(0.5, 1.5)
      m.weight.data.uniform_(0.5, 1.5)
      m.bias.data.uniform_(-0.1, 0.1)
  os.makedirs(out, exist_ok=True)
  torch.save(model.state_dict(), os.path.join(out, "resnet.pth"))
  trunk = torch.nn.Sequential(*list(model.children())[:-2]).eval()
  with torch.no_grad():
    y = trunk(torch.from_numpy(np.load(inputs)["x"]))
  np.savez(os.path.join(out, "out.npz"), y=y.numpy())


if __name__ == "__main__":
  if sys.argv[1] == "save":
    save(sys.argv[2])
  elif sys.argv[1] == "resnet":
    resnet(*sys.argv[2:5])
  elif sys.argv[1] == "mobilenet":
    mobilenet(*sys.argv[2:5])
  else:
    raise SystemExit(__doc__)
