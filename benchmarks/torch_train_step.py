"""The PyTorch side of ``benchmarks/train_step.py --vs_torch``: the same network, loss
and optimiser as jreid's train step, timed on command.

Runs in a venv with torch and torchvision (never jreid's: ``requirements.txt`` has no
torch), e.g. ``~/.cache/jreid/torch_venv``; ``train_step.py`` starts it and talks to it
over stdin / stdout, one JSON object a line:

  python benchmarks/torch_train_step.py --backbone=resnet --depth=18 --recipe=pcb \
      --image_size=128,64 --batch=32 --classes=751 --threads=2

prints ``{"params": N (trainable), "warmup_s": s}`` once built and warmed up (two steps), then
answers each line ``{"steps": n}`` with ``{"seconds": per-step seconds}`` after running
n training steps on one fixed random batch, and stops at end of input. A line
``{"profile": n}`` runs n steps under ``torch.profiler`` instead and answers with their
per-step seconds, the per-step self time of each kind of operator (``KINDS``: the
k x k and the 1x1 convolutions forward and backward, BatchNorm, ReLU, the residual
adds, max-pool, matrix products, the optimiser, copies) and of the costliest operators
(``benchmarks/profile_train_step.py --vs_torch`` prints them beside jreid's).

The network is torchvision's (``resnet18`` / ``resnet50`` with the last stage's stride
set to ``--last_stride``; ``mobilenet_v2().features`` with block 14's stride set to it),
in training mode, float32, channels-first as PyTorch's CPU kernels (oneDNN) prefer.
Heads, losses and optimisers are those of ``jreid.models.heads``, ``jreid.losses`` and
``jreid.train.make_optimizer``:

- pcb: the feature map average-pooled into 6 horizontal parts, dropout 0.5, per part
  Linear(C, 256), BatchNorm1d, dropout 0.5, Linear(256, classes); the sum of the six
  cross-entropies; SGD with Nesterov momentum 0.9, weight decay 5e-4, the heads at 10x
  the backbone's learning rate.
- strong: global average pooling, BatchNorm1d without shift, bias-free Linear; the
  label-smoothed (0.1) cross-entropy plus the batch-hard triplet loss (margin 0.3) on
  the pre-BN feature; Adam (lr 3.5e-4, weight decay 5e-4).
"""

import argparse
import contextlib
import json
import os
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F


def _torchvision():
  """torchvision, its operator schemas defined first where its CUDA build meets a CPU
  torch (``tests/torch_oracle._torch``, the one shim of the torch-venv scripts)."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "tests"))
  import torch_oracle  # pylint: disable=g-import-not-at-top  (imports no torch itself)
  torch_oracle._torch()  # pylint: disable=protected-access
  import torchvision  # pylint: disable=g-import-not-at-top
  return torchvision


def backbone(name: str, depth: int, last_stride: int) -> tuple[nn.Module, int]:
  """(trunk [B, 3, H, W] -> [B, C, h, w], C)."""
  models = _torchvision().models
  if name == "mobilenet_v2":
    features = models.mobilenet_v2().features
    features[14].conv[1][0].stride = (last_stride, last_stride)  # the 160-channel stage
    return features, 1280
  net = {18: models.resnet18, 34: models.resnet34, 50: models.resnet50}[depth]()
  first = net.layer4[0]
  (first.conv2 if depth >= 50 else first.conv1).stride = (last_stride, last_stride)
  first.downsample[0].stride = (last_stride, last_stride)
  trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                        net.layer3, net.layer4)
  return trunk, 2048 if depth >= 50 else 512


class PCBHead(nn.Module):
  def __init__(self, channels: int, classes: int, parts: int = 6, bottleneck: int = 256):
    super().__init__()
    self.parts = parts
    self.blocks = nn.ModuleList(
        nn.Sequential(nn.Linear(channels, bottleneck), nn.BatchNorm1d(bottleneck),
                      nn.Dropout(0.5), nn.Linear(bottleneck, classes)) for _ in range(parts))

  def forward(self, fmap, labels):
    pooled = F.dropout(F.adaptive_avg_pool2d(fmap, (self.parts, 1))[..., 0], 0.5, self.training)
    return sum(F.cross_entropy(block(pooled[:, :, i]), labels)
               for i, block in enumerate(self.blocks))


class BNNeckHead(nn.Module):
  def __init__(self, channels: int, classes: int):
    super().__init__()
    self.bn = nn.BatchNorm1d(channels)
    self.bn.bias.requires_grad_(False)
    self.classifier = nn.Linear(channels, classes, bias=False)

  def forward(self, fmap, labels):
    f_t = fmap.mean(dim=(2, 3))
    ce = F.cross_entropy(self.classifier(self.bn(f_t)), labels, label_smoothing=0.1)
    sq = (f_t * f_t).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * f_t @ f_t.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    positive = torch.where(same, d, torch.zeros_like(d)).max(1).values
    negative = torch.where(same, torch.full_like(d, float("inf")), d).min(1).values
    return ce + F.relu(positive - negative + 0.3).mean()


# aten operator -> kind; scope (forward, backward, optimiser) from the step's own
# record_function labels. Self CPU time: an operator's own, its children's excluded.
KINDS = (
    (("aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::thnn_conv2d",
      "aten::_convolution", "aten::convolution", "aten::conv2d",
      "aten::convolution_backward", "aten::mkldnn_convolution_backward"),
     "k x k convolutions"),
    (("aten::native_batch_norm", "aten::_native_batch_norm_legit",
      "aten::native_batch_norm_backward", "aten::batch_norm", "aten::_batch_norm_impl_index",
      "aten::_batch_norm_with_update", "aten::batch_norm_backward"), "BatchNorm"),
    (("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_",
      "aten::threshold_backward"), "ReLU"),
    (("aten::add", "aten::add_"), "adds (residual branches, gradient sums)"),
    (("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward"), "max-pool"),
    (("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"),
     "matrix products (heads)"),
    (("aten::copy_", "aten::contiguous", "aten::clone", "aten::to", "aten::_to_copy",
      "aten::t", "aten::transpose", "aten::permute"), "copies and transposes"),
    (("aten::empty", "aten::empty_like", "aten::zeros", "aten::zeros_like", "aten::fill_",
      "aten::zero_", "aten::resize_", "aten::empty_strided"), "allocation and fills"),
)
KIND_OF = {op: kind for ops, kind in KINDS for op in ops}
# Where the kernel is among a convolution operator's inputs (its shape tells 1x1 from k x k).
KERNEL_INPUT = {"aten::mkldnn_convolution": 1, "aten::_slow_conv2d_forward": 1,
                "aten::thnn_conv2d": 1, "aten::_convolution": 1, "aten::convolution": 1,
                "aten::conv2d": 1, "aten::convolution_backward": 2,
                "aten::mkldnn_convolution_backward": 2}


def kind_of(event) -> str:
  """An operator's kind (``KINDS``); a convolution with a 1x1 kernel is "1x1 convolutions"."""
  kind = KIND_OF.get(event.name, "other operators")
  if event.name in KERNEL_INPUT:
    shapes = event.input_shapes
    kernel = shapes[KERNEL_INPUT[event.name]] if len(shapes) > KERNEL_INPUT[event.name] else []
    if len(kernel) == 4 and kernel[2] == kernel[3] == 1:
      return "1x1 convolutions"
  return kind


SCOPES = ("forward", "backward", "optimiser update")


def profiled(step, n: int) -> dict:
  """n steps of ``step(scope)`` under torch.profiler: per-step seconds, self time by
  (kind, scope) and the 15 costliest operators, in ms per step."""
  from torch import profiler  # pylint: disable=g-import-not-at-top
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
    start = time.perf_counter()
    for _ in range(n):
      loss = step(profiler.record_function)
    loss.item()
    seconds = (time.perf_counter() - start) / n
  kinds, ops = {}, {}
  for event in prof.events():
    scope, parent = None, event
    while parent is not None and scope is None:
      scope = parent.name if parent.name in SCOPES else None
      parent = parent.cpu_parent
    if scope is None or event.name in SCOPES:
      continue
    ms = event.self_cpu_time_total / 1000 / n
    kind = "optimiser update" if scope == "optimiser update" else (
        f"{kind_of(event)}, {scope}")
    kinds[kind] = kinds.get(kind, 0.0) + ms
    ops[f"{event.name} ({scope})"] = ops.get(f"{event.name} ({scope})", 0.0) + ms
  top = sorted(ops.items(), key=lambda kv: -kv[1])[:15]
  return {"seconds": seconds, "kinds_ms": kinds, "top_ms": top}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--backbone", default="resnet", choices=("resnet", "mobilenet_v2"))
  p.add_argument("--depth", type=int, default=50)
  p.add_argument("--last_stride", type=int, default=1)
  p.add_argument("--recipe", default="pcb", choices=("pcb", "strong"))
  p.add_argument("--image_size", default="128,64")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--classes", type=int, default=751)
  p.add_argument("--threads", type=int, default=2)
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  h, w = (int(x) for x in args.image_size.split(","))
  trunk, channels = backbone(args.backbone, args.depth, args.last_stride)
  head = PCBHead(channels, args.classes) if args.recipe == "pcb" else BNNeckHead(channels, args.classes)
  model = nn.ModuleDict({"backbone": trunk, "head": head}).train()
  if args.recipe == "pcb":
    optimizer = torch.optim.SGD([{"params": trunk.parameters(), "lr": 0.01},
                                 {"params": head.parameters(), "lr": 0.1}],
                                momentum=0.9, nesterov=True, weight_decay=5e-4)
  else:
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=3.5e-4,
                                 weight_decay=5e-4)
  images = torch.randn(args.batch, 3, h, w)
  labels = torch.randint(0, args.classes, (args.batch,))

  def step(scope=None):
    scope = scope or (lambda name: contextlib.nullcontext())
    optimizer.zero_grad(set_to_none=True)
    with scope("forward"):
      loss = head(trunk(images), labels)
    with scope("backward"):
      loss.backward()
    with scope("optimiser update"):
      optimizer.step()
    return loss

  start = time.perf_counter()
  for _ in range(2):
    step()
  params = sum(q.numel() for q in model.parameters() if q.requires_grad)
  print(json.dumps({"params": params, "warmup_s": time.perf_counter() - start}), flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    if "profile" in request:
      print(json.dumps(profiled(step, request["profile"])), flush=True)
      continue
    n = request["steps"]
    start = time.perf_counter()
    for _ in range(n):
      loss = step()
    loss.item()
    print(json.dumps({"seconds": (time.perf_counter() - start) / n}), flush=True)


if __name__ == "__main__":
  main()
