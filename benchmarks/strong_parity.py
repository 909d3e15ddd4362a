"""Benchmark: jreid's strong baseline against reid-strong-baseline's code, on the real Market-1501.

  python benchmarks/strong_parity.py \
    --reference_dir=../shared/reference/reid-strong-baseline \
    --zip=../shared/market1501/Market-1501-v15.09.15.zip \
    [--seeds=0,1] [--epochs=4] [--warmup_epochs=1] [--decay_epochs=3] \
    [--workdir=/tmp/jreid_strong_parity]

Both sides train the same network from scratch (no ImageNet) on the real training
split (12,936 images, 751 identities): a ResNet-18 of half width (stem 32 channels)
with last stride 1 and the BNNeck head, at 96x48, with the recipe of Luo et al. 2019
(``experiments/market1501_strong.py``): P x K = 16 x 4 batches from the authors'
identity sampler, batch-hard triplet loss (margin 0.3) on the pre-BN feature plus
cross-entropy with label smoothing 0.1 on the BN feature's logits, Adam (``--lr``,
3.5e-4; weight decay 5e-4 on every parameter, one lr for all), linear warm-up over
``--warmup_epochs`` and x0.1 at each of ``--decay_epochs``, flip, pad-and-crop
(``--pad``: the recipe's 10 px at 256x128 scaled to the input height, 4 at 96) and
random erasing p 0.5. The schedule is shorter (``--epochs``), so that two runs per side
fit an afternoon on a 2-core CPU.

1. The zip is extracted once (``<workdir>/market``); the reference's own dataset
   reader (``data/datasets/market1501.py``) reads it through the link
   ``<workdir>/reference_root/market1501``.
2. The reference side runs its own ``tools/train.py`` (``configs/softmax_triplet.yml``,
   the paper's "all tricks without center loss", with yacs overrides for the
   network, input, schedule and CPU: ``reference_opts``, printed), that is its own
   ignite 0.1.2 training loop (``engine/trainer.py``: ``do_train``) around its
   ``Baseline`` (BNNeck), ``make_loss`` (``TripletLoss`` + ``CrossEntropyLabelSmooth``),
   ``RandomIdentitySampler``, ``build_transforms``, ``make_optimizer`` and
   ``WarmupMultiStepLR``. PyTorch on this CPU, in a venv of its own (``--venv``, made
   with ``--torch_spec`` when missing, plus ``pytorch-ignite==0.1.2 yacs``; never
   ``requirements.txt``). ignite 0.1.2 imports ``torch._six``, which PyTorch 2 no
   longer has: the venv's ``sitecustomize.py`` defines it (``string_classes``, the one
   name ignite reads), next to reference_parity.py's torchvision shim.
3. The reference side's features: the checkpoint ignite saved after the last epoch,
   loaded into a fresh ``build_model`` (as ``tools/test.py`` does), and run through the
   reference's own test path, ``engine/inference.py``'s ``create_supervised_evaluator``
   (``Baseline`` in eval mode, ``TEST.NECK_FEAT 'after'``: the BN feature) over its own
   val loader (query then gallery, its test transform: resize, no flip). The benchmark's
   helper (``jreid_extract.py``, written beside the copy) collects them with an ignite
   ``Metric`` as the reference's ``R1_mAP`` does, and writes them with ids, cameras
   (1-based) and file names; the benchmark (in jreid's venv) adds the global frames
   (``jreid.names.parse_name(name).time``, checking ids and cameras against the names)
   and writes the features file (``features.npz``).
4. The jreid side: ``main.py --config=experiments/market1501_strong.py`` with the same
   network, input, pad, lr, schedule, seed and epochs, visual evaluation only.
5. Both features files go through jreid's features-file job
   (``experiments/eval_features.py``, the training names of ``bounding_box_train`` for
   the ST model; num_parts 1), so that only the training differs.

Like with like, where the two codes differ in ways that are not the trainer's:
- Test-time flip: jreid's extraction adds the BN feature of the horizontal flip to
  that of the image; the reference's test path does not flip. By default
  (``--reference_flip``) the reference side does the same as jreid: its evaluator
  runs on a wrapper that returns model(x) + model(flip(x)), and the benchmark says so.
  ``--no-reference_flip`` keeps the reference's single view.
- Stem ReLU: the reference's ResNet leaves out the ReLU after the stem's BN (its
  ``# add missed relu`` lines are commented out); jreid's (torchvision's) has it. By
  default (``--stem_relu``) the reference side's backbone has it, as jreid's;
  ``--no-stem_relu`` keeps the reference's forward.
- Initialisation: the reference's ResNet has no initialisation of its own in its
  constructor (it is always loaded from ImageNet weights in the reference's runs);
  the patch backbone calls its ``random_init()`` (convolutions N(0, 2 / (k x k x
  out channels)), BN 1 / 0), which is jreid's He-normal fan-out initialisation.
  BNNeck and classifier are the reference's own (``weights_init_kaiming``,
  ``weights_init_classifier``: N(0, 0.001^2)).

- Warm-up: the reference steps its lr once an epoch, from 0.01 x lr at the first
  epoch to lr at epoch ``--warmup_epochs`` (WARMUP_FACTOR 0.01); so does
  ``experiments/market1501_strong.py`` (``optimizer.warmup_law="epoch"``).
  ``--jreid_warmup_law=step`` runs the jreid side with jreid's per-step law instead
  (every step along a line to lr at the same epoch), to measure the difference.
  The decays fall at the same epochs.
- Epoch length: the reference's epoch is one pass of its identity sampler, shorter
  than 12,936 / 64 batches by the images left over in each identity's last chunk and
  by the identities left when fewer than P have chunks (182-184 batches on Market);
  so is jreid's with ``data.pk_epoch="identity_pass"`` (the recipe's: the mean pass
  length, 183 batches, in every epoch). ``--jreid_pk_epoch=images`` runs the jreid
  side with jreid's default P x K epoch instead, passes following one another up to
  12,936 // 64 = 202 batches. Both counts are printed (steps/epoch).

Differences the benchmark leaves as they are (each code's own way), stated in its output:
- Images: the reference resizes with PIL's bilinear filter on the host, jreid
  bicubically on the device; the reference pads with black before its crop, jreid with
  the mean colour; the reference's random erasing fills the normalised image with the
  ImageNet mean values (0.485, 0.456, 0.406), jreid with 0 (the mean colour).
- Gallery: the reference's reader drops the junk images (id -1) from the gallery;
  jreid keeps them and the Market protocol ignores them, so the metrics are the same.

Never copied into the repository: each run copies the reference's files into
``<workdir>``, applies ``PATCHES`` (each must match exactly once, or the benchmark
stops) and prints them, with the yacs overrides. Nothing derived from the dataset's
images is written outside ``--workdir``, which must not lie inside the repository. The
patches (the list below is appended from ``PATCHES`` itself):

"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import reference_parity as rp  # pylint: disable=g-import-not-at-top,wrong-import-position

P, K = 16, 4                # identities per batch, images per identity (batch 64)
CONFIG_FILE = "configs/softmax_triplet.yml"
IGNITE_SPEC = "pytorch-ignite==0.1.2 yacs"

# (file, why, old text, new text): applied to copies of the reference's files.
PATCHES = [
    ("modeling/baseline.py", "import the patch module",
     "from .backbones.resnet_ibn_a import resnet50_ibn_a\n",
     "from .backbones.resnet_ibn_a import resnet50_ibn_a\nimport jreid_patch\n"),
    ("modeling/baseline.py", "MODEL.NAME 'resnet18' builds the benchmark's backbone "
     "(jreid_patch.HalfResNet: the reference's ResNet class, its BasicBlock, _make_layer and "
     "random_init, at a stem of --width channels), whose 8 x width channels the BNNeck takes "
     "(512 in the reference)",
     "            self.in_planes = 512\n"
     "            self.base = ResNet(last_stride=last_stride, \n"
     "                               block=BasicBlock, \n"
     "                               layers=[2, 2, 2, 2])\n",
     "            self.in_planes = jreid_patch.CHANNELS\n"
     "            self.base = jreid_patch.HalfResNet(last_stride=last_stride, \n"
     "                               block=BasicBlock, \n"
     "                               layers=[2, 2, 2, 2])\n"),
    ("modeling/baseline.py", "from scratch: no ImageNet weights are loaded when "
     "MODEL.PRETRAIN_PATH is empty (tools/train.py needs PRETRAIN_CHOICE 'imagenet' for a "
     "fresh run)",
     "        if pretrain_choice == 'imagenet':\n",
     "        if pretrain_choice == 'imagenet' and model_path:\n"),
    ("layers/triplet_loss.py", "CPU: CrossEntropyLabelSmooth keeps its smoothed targets on the "
     "CPU (use_gpu=True, what make_loss gets, moves them to CUDA)",
     "def __init__(self, num_classes, epsilon=0.1, use_gpu=True):",
     "def __init__(self, num_classes, epsilon=0.1, use_gpu=False):"),
    ("solver/lr_scheduler.py", "the schedule of the PyTorch the reference was written for "
     "(< 1.1): the scheduler starts at last_epoch -1, so that the trainer's scheduler.step() "
     "at the start of epoch e (1-based) gives the lr of epoch e - 1 (warm-up from "
     "WARMUP_FACTOR x lr at the first epoch, x0.1 after STEPS[i] epochs); PyTorch >= 1.1 "
     "steps once in the constructor, which runs the schedule one epoch ahead",
     "        super(WarmupMultiStepLR, self).__init__(optimizer, last_epoch)\n",
     "        super(WarmupMultiStepLR, self).__init__(optimizer, last_epoch)\n"
     "        self.last_epoch = last_epoch\n"),
    ("tools/train.py", "seed random, numpy and torch (the reference does not seed), and log "
     "ignite's per-epoch times",
     "from utils.logger import setup_logger\n",
     "from utils.logger import setup_logger\nimport jreid_patch\njreid_patch.setup()\n"),
]

# Written beside the patched files (the benchmark's own code, not the reference's).
PATCH_MODULE = '''"""Settings and the backbone that strong_parity.py's patches call."""
import logging
import random
import sys

import numpy as np
import torch
from torch import nn

from modeling.backbones.resnet import ResNet

WIDTH, SEED, STEM_RELU = {width}, {seed}, {stem_relu}
CHANNELS = WIDTH * 8  # BasicBlock (ResNet-18)


def setup():
  random.seed(SEED)
  np.random.seed(SEED)
  torch.manual_seed(SEED)
  engine_log = logging.getLogger("ignite.engine.engine.Engine")
  engine_log.setLevel(logging.INFO)
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(logging.Formatter("%(asctime)s ignite: %(message)s"))
  engine_log.addHandler(handler)


class HalfResNet(ResNet):
  """The reference's ResNet (its blocks, _make_layer and random_init) with a stem of WIDTH
  channels; with STEM_RELU a ReLU after the stem's BN (as torchvision's and jreid's)."""

  def __init__(self, last_stride=2, block=None, layers=(2, 2, 2, 2)):
    nn.Module.__init__(self)
    self.inplanes = WIDTH
    self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(WIDTH)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, WIDTH, layers[0])
    self.layer2 = self._make_layer(block, WIDTH * 2, layers[1], stride=2)
    self.layer3 = self._make_layer(block, WIDTH * 4, layers[2], stride=2)
    self.layer4 = self._make_layer(block, WIDTH * 8, layers[3], stride=last_stride)
    self.random_init()

  def forward(self, x):
    if not STEM_RELU:
      return ResNet.forward(self, x)
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))
'''

# The reference side's helper (the benchmark's own code), run in the patched copy.
EXTRACT_SCRIPT = '''"""strong_parity.py's helper: the reference model's parameters, or its features.

  python jreid_extract.py --count --out=count.json --config_file=... [yacs opts]
  python jreid_extract.py --weight=model.pth --out=raw.npz [--flip] --config_file=... [opts]

Features: the trained model's weights in a fresh build_model (as tools/test.py),
through engine/inference.py's create_supervised_evaluator over the reference's val
loader (query, then gallery), collected as utils/reid_metric.py's R1_mAP collects
them; with --flip the evaluator runs on model(x) + model(flip(x)).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from ignite.metrics import Metric
from torch import nn

sys.path.append(".")
from config import cfg
from data import make_data_loader
from engine.inference import create_supervised_evaluator
from modeling import build_model


class Collect(Metric):
  def reset(self):
    self.feats, self.pids, self.camids = [], [], []

  def update(self, output):
    feat, pid, camid = output
    self.feats.append(feat)
    self.pids.extend(np.asarray(pid))
    self.camids.extend(np.asarray(camid))

  def compute(self):
    return torch.cat(self.feats, dim=0).numpy(), np.asarray(self.pids), np.asarray(self.camids)


class FlipAdd(nn.Module):
  def __init__(self, model):
    super().__init__()
    self.model = model

  def forward(self, x):
    return self.model(x) + self.model(torch.flip(x, dims=[3]))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config_file", required=True)
  p.add_argument("--count", action="store_true")
  p.add_argument("--weight", default="")
  p.add_argument("--out", required=True)
  p.add_argument("--flip", action="store_true")
  p.add_argument("opts", nargs=argparse.REMAINDER)
  args = p.parse_args()
  cfg.merge_from_file(args.config_file)
  cfg.merge_from_list(args.opts)
  cfg.freeze()
  torch.manual_seed(0)
  _, val_loader, num_query, num_classes = make_data_loader(cfg)
  model = build_model(cfg, num_classes)
  if args.count:
    with open(args.out, "w") as f:
      json.dump(dict(num_classes=num_classes,
                     trainable=sum(x.numel() for x in model.parameters() if x.requires_grad),
                     total=sum(x.numel() for x in model.parameters())), f)
    return
  trained = torch.load(args.weight, map_location="cpu", weights_only=False)
  model.load_state_dict(trained.state_dict())
  evaluator = create_supervised_evaluator(FlipAdd(model) if args.flip else model,
                                          metrics={"features": Collect()},
                                          device=cfg.MODEL.DEVICE)
  evaluator.run(val_loader)
  feats, pids, camids = evaluator.state.metrics["features"]
  names = np.asarray([os.path.basename(path) for path, _, _ in val_loader.dataset.dataset])
  q = num_query
  np.savez(args.out, query_f=feats[:q], query_label=pids[:q], query_cam=camids[:q] + 1,
           query_names=names[:q], gallery_f=feats[q:], gallery_label=pids[q:],
           gallery_cam=camids[q:] + 1, gallery_names=names[q:])
  print(f"features: {q} query, {len(feats) - q} gallery, {feats.shape[1]} dims, "
        f"flip {args.flip}")


if __name__ == "__main__":
  main()
'''

# ignite 0.1.2 reads torch._six.string_classes, gone from PyTorch 2; defined here.
SIX_SHIM = '''import sys as _sys
import types as _types
try:
  import torch._six  # noqa: F401  (PyTorch < 2 has it)
except ImportError:
  _six = _types.ModuleType("torch._six")
  _six.string_classes = (str, bytes)
  _sys.modules["torch._six"] = _six
'''


__doc__ += rp.patch_list(PATCHES) + "\n"


def reference_opts(args, seed_dir: str, epochs: int) -> list[str]:
  """The yacs overrides of configs/softmax_triplet.yml (key, value pairs, flattened)."""
  h, w = args.image_size
  opts = {
      "MODEL.DEVICE": "cpu", "MODEL.NAME": "resnet18", "MODEL.LAST_STRIDE": "1",
      "MODEL.NECK": "bnneck", "MODEL.PRETRAIN_CHOICE": "imagenet", "MODEL.PRETRAIN_PATH": "''",
      "DATASETS.NAMES": "market1501", "DATASETS.ROOT_DIR": args.reference_root,
      "DATALOADER.NUM_WORKERS": str(args.workers), "DATALOADER.NUM_INSTANCE": str(K),
      "INPUT.SIZE_TRAIN": f"[{h}, {w}]", "INPUT.SIZE_TEST": f"[{h}, {w}]",
      "INPUT.PADDING": str(args.pad),
      "SOLVER.IMS_PER_BATCH": str(P * K), "SOLVER.BASE_LR": repr(args.lr),
      "SOLVER.MAX_EPOCHS": str(epochs), "SOLVER.WARMUP_ITERS": str(args.warmup_epochs),
      "SOLVER.STEPS": "(" + "".join(f"{e}," for e in args.decay_epochs) + ")",
      "SOLVER.CHECKPOINT_PERIOD": str(max(epochs, 1)),
      "SOLVER.EVAL_PERIOD": str(epochs + 1), "SOLVER.LOG_PERIOD": "1",
      "TEST.NECK_FEAT": "after", "TEST.FEAT_NORM": "yes", "OUTPUT_DIR": seed_dir,
  }
  return [x for kv in opts.items() for x in kv]


def patched_copy(reference_dir: str, out: str, fmt: dict) -> None:
  """Copies the reference's tree into ``out`` and applies PATCHES (each exactly once)."""
  shutil.copytree(reference_dir, out, ignore=shutil.ignore_patterns(".git", "imgs", "*.sh"))
  rp.apply_patches(reference_dir, out, PATCHES, "3da7e6f")
  with open(os.path.join(out, "jreid_patch.py"), "w") as f:
    f.write(PATCH_MODULE.format(**fmt))
  with open(os.path.join(out, "jreid_extract.py"), "w") as f:
    f.write(EXTRACT_SCRIPT)
  with open(os.path.join(out, "sitecustomize.py"), "w") as f:
    f.write(rp.SITECUSTOMIZE + SIX_SHIM)


def ensure_torch_venv(args) -> str:
  python = rp.ensure_venv(args.venv, args.torch_spec)
  probe = [python, "-c", "import importlib.metadata as m; import yacs; "
           "assert m.version('pytorch-ignite') == '0.1.2'"]
  if subprocess.run(probe, capture_output=True).returncode:
    rp.log(f"installing {IGNITE_SPEC} into {args.venv}")
    subprocess.run([python, "-m", "pip", "install", "-q", *IGNITE_SPEC.split()], check=True)
  return python


def reference_env(out: str) -> dict:
  return {"PYTHONPATH": out, "OMP_NUM_THREADS": str(os.cpu_count())}


def reference_count(args, python) -> dict:
  """The reference model's parameter count (trainable, and with the BNNeck's frozen shift)."""
  out = os.path.join(args.workdir, "reference_count")
  shutil.rmtree(out, ignore_errors=True)
  patched_copy(args.reference_dir, out, dict(width=args.width, seed=0,
                                             stem_relu=args.stem_relu))
  path = os.path.join(out, "count.json")
  rp.run([python, "jreid_extract.py", "--count", f"--out={path}", f"--config_file={CONFIG_FILE}",
          *reference_opts(args, os.path.join(out, "train"), args.epochs)], out,
         os.path.join(out, "count.log"), reference_env(out))
  with open(path) as f:
    return json.load(f)


def jreid_overrides(args, seed: int) -> list[str]:
  h, w = args.image_size
  return [f"--config.train.seed={seed}", f"--config.train.epochs={args.epochs}",
          "--config.model.depth=18", f"--config.model.width={args.width}",
          f"--config.data.image_size=({h},{w})", f"--config.augment.pad={args.pad}",
          f"--config.optimizer.lr={args.lr!r}",
          f"--config.optimizer.warmup_epochs={float(args.warmup_epochs)}",
          f"--config.optimizer.warmup_law={args.jreid_warmup_law}",
          f"--config.data.pk_epoch={args.jreid_pk_epoch}",
          "--config.optimizer.decay_epochs=(" + "".join(f"{e}," for e in args.decay_epochs) + ")",
          "--config.eval.methods=('visual',)", "--config.rerank.enabled=False"]


def jreid_count(args, num_classes: int) -> int:
  """Parameters of jreid's model with the benchmark's overrides (built on the CPU, not trained:
  this process leaves the accelerator to the training jobs)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  from experiments import market1501_strong  # pylint: disable=g-import-not-at-top
  from jreid import stages  # pylint: disable=g-import-not-at-top
  from jreid import train  # pylint: disable=g-import-not-at-top
  from jreid.models import heads  # pylint: disable=g-import-not-at-top
  config = market1501_strong.get_config()
  config.model.depth, config.model.width = 18, args.width
  config.data.image_size = tuple(args.image_size)
  return heads.count_params(train.build_model(stages.model_config(config), num_classes))


def convert_features(raw_path: str, out_path: str) -> dict:
  """The reference side's features with global frames from the names (jreid.names)."""
  from jreid import names  # pylint: disable=g-import-not-at-top
  raw = np.load(raw_path)
  out, sizes = {}, {}
  for side in ("query", "gallery"):
    side_names = [str(n) for n in raw[f"{side}_names"]]
    parsed = names.parse_names(side_names)
    labels, cams = raw[f"{side}_label"].astype(np.int64), raw[f"{side}_cam"].astype(np.int64)
    wrong = np.nonzero((parsed.person_ids != labels) | (parsed.cameras + 1 != cams))[0]
    if wrong.size:
      i = int(wrong[0])
      raise SystemExit(f"{raw_path}: {side_names[i]} has id {labels[i]}, camera {cams[i]} in "
                       f"the reference's features; its name says {parsed.person_ids[i]}, "
                       f"{parsed.cameras[i] + 1}")
    out[f"{side}_f"] = raw[f"{side}_f"].astype(np.float32)
    out[f"{side}_label"], out[f"{side}_cam"] = labels, cams
    out[f"{side}_frames"] = parsed.times
    out[f"{side}_names"] = np.asarray(side_names)
    sizes[side] = len(side_names)
  np.savez(out_path, **out)
  return sizes


def reference_side(args, python, seed: int) -> dict:
  out = os.path.join(args.workdir, f"reference_seed{seed}")
  shutil.rmtree(out, ignore_errors=True)
  patched_copy(args.reference_dir, out, dict(width=args.width, seed=seed,
                                             stem_relu=args.stem_relu))
  train_dir = os.path.join(out, "train")
  opts = reference_opts(args, train_dir, args.epochs)
  env = reference_env(out)
  rp.log(f"reference seed {seed}: training {args.epochs} epochs (tools/train.py, ignite)")
  log_path = os.path.join(out, "train.log")
  train_s = rp.run([python, "tools/train.py", f"--config_file={CONFIG_FILE}", *opts], out,
                   log_path, env)
  text = open(log_path, errors="replace").read()
  stamps = [time.mktime(time.strptime(t, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000 for t, ms in
            re.findall(r"^(\S+ \S+),(\d+) ignite: (?:Engine run starting|Epoch\[\d+\] Complete)",
                       text, re.M)]
  steps = [len(re.findall(rf"Epoch\[{e}\] Iteration\[", text)) for e in range(1, args.epochs + 1)]
  last = re.findall(r"Loss: ([\d.]+), Acc: ([\d.]+)", text)
  weight = os.path.join(train_dir, f"resnet18_model_{args.epochs}.pth")
  rp.log(f"reference seed {seed}: features (its create_supervised_evaluator"
         f"{', + the flip' if args.reference_flip else ''})")
  raw = os.path.join(out, "reference_features_raw.npz")
  extract_s = rp.run([python, "jreid_extract.py", f"--weight={weight}", f"--out={raw}",
                      *(["--flip"] if args.reference_flip else []),
                      f"--config_file={CONFIG_FILE}", *opts], out,
                     os.path.join(out, "extract.log"), env)
  features = os.path.join(out, "features.npz")
  sizes = convert_features(raw, features)
  results = rp.evaluate(features, os.path.join(args.market_root, "bounding_box_train"),
                        os.path.join(out, "eval"), num_parts=1)
  loop_s = stamps[-1] - stamps[0] if len(stamps) == args.epochs + 1 else train_s
  return dict(results=results, epoch_s=loop_s / args.epochs,
              train_s=train_s, extract_s=extract_s, steps_per_epoch=steps, sizes=sizes,
              last_loss_acc=[float(x) for x in last[-1]] if last else None)


def jreid_side(args, seed: int) -> dict:
  out = os.path.join(args.workdir, f"jreid_seed{seed}")
  shutil.rmtree(out, ignore_errors=True)
  rp.log(f"jreid seed {seed}: training {args.epochs} epochs")
  seconds = rp.run([sys.executable, os.path.join(ROOT, "main.py"), f"--workdir={out}",
                    f"--config={os.path.join(ROOT, 'experiments', 'market1501_strong.py')}",
                    f"--config.manual_dir={os.path.dirname(args.zip)}",
                    f"--config.data_dir={os.path.join(args.workdir, 'tfds')}",
                    *jreid_overrides(args, seed)], ROOT, out + ".log")
  text = open(out + ".log", errors="replace").read()
  m = re.search(r"training: (\d+) steps in ([\d.]+) s", text)
  loop_s = float(m.group(2)) if m else seconds
  m = re.search(r"training: (\d+) params, .*\((\d+) per epoch\)", text)
  params, steps = (int(m.group(1)), int(m.group(2))) if m else (None, None)
  last = re.findall(r"loss ([\d.]+)\s+acc ([\d.]+)", text)
  results = rp.evaluate(os.path.join(out, "features.npz"),
                        os.path.join(args.market_root, "bounding_box_train"), out + "_eval",
                        num_parts=1)
  return dict(results=results, epoch_s=loop_s / args.epochs, train_s=seconds,
              steps_per_epoch=steps, params=params,
              last_loss_acc=[float(x) for x in last[-1]] if last else None)


SHIMS = ("the copy's sitecustomize.py (on PYTHONPATH, not the reference's code): "
         "reference_parity.py's torchvision op schemas, and torch._six.string_classes, which "
         "ignite 0.1.2 imports and PyTorch 2 no longer has; jreid_patch.py (the benchmark's): "
         "the seeds, the ignite epoch-time log and HalfResNet")


def settings_text(args) -> str:
  h, w = args.image_size
  return "\n".join([
      f"network: ResNet-18, stem {args.width} channels, last stride 1, BNNeck, {h}x{w}, "
      f"from scratch; stem ReLU on the reference side: {args.stem_relu} (jreid: True)",
      f"batches: P x K = {P} x {K}; Adam lr {args.lr:g}, weight decay 5e-4; warm-up "
      f"{args.warmup_epochs} epochs (reference: per epoch from 0.01 x lr; jreid: "
      f"{'the same' if args.jreid_warmup_law == 'epoch' else 'per step from 0'}); "
      f"x0.1 at epochs {list(args.decay_epochs)}; {args.epochs} epochs; pad {args.pad}",
      f"test features: BN feature ('after'); reference flip-and-add: {args.reference_flip} "
      f"(jreid: always){'' if args.reference_flip else ' -- NOT like with like'}",
      f"epoch: reference one sampler pass; jreid {args.jreid_pk_epoch} (steps/epoch below)",
      "left as each code has it: resize filter (reference bilinear, jreid bicubic), pad "
      "colour (black / mean), erasing fill (ImageNet mean values in normalised units / 0), "
      "junk gallery images (dropped / kept and ignored)"])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--reference_dir", required=True, help="the reid-strong-baseline folder")
  p.add_argument("--zip", required=True)
  p.add_argument("--workdir", default="/tmp/jreid_strong_parity")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--sides", default="reference,jreid")
  p.add_argument("--epochs", type=int, default=4)
  p.add_argument("--jreid_warmup_law", default="epoch", choices=("epoch", "step"),
                 help="jreid's optimizer.warmup_law: 'epoch' as the reference, 'step' jreid's own")
  p.add_argument("--jreid_pk_epoch", default="identity_pass", choices=("identity_pass", "images"),
                 help="jreid's data.pk_epoch: 'identity_pass' as the reference, 'images' jreid's "
                      "own (len // batch steps)")
  p.add_argument("--warmup_epochs", type=int, default=1,
                 help="epochs of linear warm-up (the reference's WARMUP_ITERS; 0: none)")
  p.add_argument("--decay_epochs", default="3", help="x0.1 at these epochs (comma-separated)")
  p.add_argument("--lr", type=float, default=3.5e-4)
  p.add_argument("--width", type=int, default=32, help="stem channels of the ResNet-18")
  p.add_argument("--image_size", default="96,48")
  p.add_argument("--pad", type=int, default=None,
                 help="pad-and-crop pixels (default: 10 x height / 256, rounded)")
  p.add_argument("--stem_relu", action=argparse.BooleanOptionalAction, default=True,
                 help="a ReLU after the reference backbone's stem BN, as jreid's")
  p.add_argument("--reference_flip", action=argparse.BooleanOptionalAction, default=True,
                 help="the reference side's features add the flip's, as jreid's")
  p.add_argument("--workers", type=int, default=2, help="reference data-loader processes")
  p.add_argument("--venv", default=os.path.expanduser("~/.cache/jreid/torch_venv"))
  p.add_argument("--torch_spec", default="torch==2.13.0 torchvision==0.28.0")
  args = p.parse_args()
  args.image_size = tuple(int(x) for x in args.image_size.split(","))
  args.decay_epochs = tuple(int(x) for x in args.decay_epochs.split(",") if x.strip())
  if args.pad is None:
    args.pad = round(10 * args.image_size[0] / 256)
  args.reference_dir = os.path.abspath(args.reference_dir)
  args.zip = os.path.abspath(args.zip)
  args.workdir = os.path.abspath(args.workdir)
  rp.refuse_inside_repository(args.workdir)
  seeds = [int(s) for s in args.seeds.split(",")]
  sides = args.sides.split(",")
  os.makedirs(args.workdir, exist_ok=True)
  print("The reference side runs its own tools/train.py (ignite 0.1.2's loop, engine/trainer.py)"
        "; patches applied to copies of its files:\n" + rp.patch_list(PATCHES), flush=True)
  print(f"Beside them: {SHIMS}", flush=True)
  print(f"\nSettings:\n{settings_text(args)}", flush=True)

  args.market_root = rp.extract(args.zip, os.path.join(args.workdir, "market"))
  args.reference_root = os.path.join(args.workdir, "reference_root")
  link = os.path.join(args.reference_root, "market1501")
  if os.path.realpath(link) != os.path.realpath(args.market_root):
    shutil.rmtree(args.reference_root, ignore_errors=True)
    os.makedirs(args.reference_root)
    os.symlink(args.market_root, link)
  params = {}
  if "reference" in sides:
    python = ensure_torch_venv(args)
    print("\nThe reference's yacs overrides of " + CONFIG_FILE + " (seed folder <out>):\n  "
          + " ".join(reference_opts(args, "<out>/train", args.epochs)), flush=True)
    count = reference_count(args, python)
    params["reference"] = count["trainable"]
    params["reference_total"] = count["total"]
    params["jreid"] = jreid_count(args, count["num_classes"])
    print(f"\nParameters ({count['num_classes']} classes): reference {count['trainable']} "
          f"trainable ({count['total']} with the BNNeck's frozen shift), jreid "
          f"{params['jreid']}", flush=True)
    if params["jreid"] != params["reference"]:
      raise SystemExit("the two models differ in their parameter counts: not the same network")
  runs = {"reference": {}, "jreid": {}}
  for seed in seeds:
    if "reference" in sides:
      runs["reference"][seed] = reference_side(args, python, seed)
      rp.log(f"reference seed {seed}: {runs['reference'][seed]['results']['visual']}")
    if "jreid" in sides:
      runs["jreid"][seed] = jreid_side(args, seed)
      rp.log(f"jreid seed {seed}: {runs['jreid'][seed]['results']['visual']}")
    with open(os.path.join(args.workdir, "strong_parity.json"), "w") as f:
      json.dump(dict(args=vars(args), settings=settings_text(args), params=params,
                     patches=[(f, w) for f, w, _, _ in PATCHES], runs=runs), f, indent=1)
  h, w = args.image_size
  print(f"\nStrong-baseline parity on {args.zip}: ResNet-18 width {args.width}, "
        f"BNNeck, {h}x{w}, P x K {P} x {K}, Adam {args.lr:g}, warm-up {args.warmup_epochs}, "
        f"x0.1 at {list(args.decay_epochs)}, {args.epochs} epochs, from scratch; features of "
        f"both sides evaluated by jreid's features-file job (percent; s/epoch: the training "
        f"loop's wall time)\n")
  print(settings_text(args) + "\n")
  print(rp.table(runs))
  for side in ("reference", "jreid"):
    for seed, r in sorted(runs[side].items()):
      print(f"{side} seed {seed}: steps/epoch {r['steps_per_epoch']}, last logged loss/acc "
            f"{r['last_loss_acc']}" + (f", query/gallery {r['sizes']['query']}/"
                                       f"{r['sizes']['gallery']}" if "sizes" in r else ""))
  if params:
    print(f"parameters: reference {params['reference']}, jreid {params['jreid']}")
  logged = {r["params"] for r in runs["jreid"].values()}
  if params and logged != {params["jreid"]}:
    print(f"WARNING: jreid's training logs {sorted(logged, key=str)} params, not "
          f"{params['jreid']}")
  print(f"\n{os.path.join(args.workdir, 'strong_parity.json')}")


if __name__ == "__main__":
  main()
