"""The PyTorch side of ``benchmarks/train_step.py --vs_torch``: the same network, loss
and optimiser as jreid's train step, timed on command.

Runs in a venv with torch and torchvision (never jreid's: ``requirements.txt`` has no
torch), e.g. ``~/.cache/jreid/torch_venv``; ``train_step.py`` starts it and talks to it
over stdin / stdout, one JSON object a line:

  python benchmarks/torch_train_step.py --backbone=resnet --depth=18 --recipe=pcb \
      --image_size=128,64 --batch=32 --classes=751 --threads=2

prints ``{"params": N (trainable), "warmup_s": s}`` once built and warmed up (two steps), then
answers each line ``{"steps": n}`` with ``{"seconds": per-step seconds}`` after running
n training steps on one fixed random batch, and stops at end of input.

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

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = head(trunk(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  start = time.perf_counter()
  for _ in range(2):
    step()
  params = sum(q.numel() for q in model.parameters() if q.requires_grad)
  print(json.dumps({"params": params, "warmup_s": time.perf_counter() - start}), flush=True)
  for line in sys.stdin:
    n = json.loads(line)["steps"]
    start = time.perf_counter()
    for _ in range(n):
      loss = step()
    loss.item()
    print(json.dumps({"seconds": (time.perf_counter() - start) / n}), flush=True)


if __name__ == "__main__":
  main()
