"""Benchmark: jreid's PCB trainer against the reference's own code, on the real Market-1501.

  python benchmarks/reference_parity.py \
    --reference_dir=../shared/reference/Spatial-Temporal-Re-identification \
    --zip=../shared/market1501/Market-1501-v15.09.15.zip \
    [--seeds=0,1] [--epochs=4] [--decay_epoch=3] [--workdir=/tmp/jreid_parity]
  python benchmarks/reference_parity.py --recipe=strong \
    --reference_dir=../shared/reference/reid-strong-baseline --zip=... [strong_parity.py's flags]

Both sides train the same network from scratch on the real training split (all
12,936 images, the reference's ``--train_all``), with the same optimiser and
parameter groups (SGD, Nesterov momentum 0.9, weight decay 5e-4 on every parameter,
backbone lr 0.01, the PCB part classifiers 0.1, x0.1 from ``--decay_epoch`` on), the
same augmentation (flip, random erasing p 0.5 with the normalised mean, 0), batch
32 and epochs. The network is ``experiments/market1501_cpu.py``'s: a ResNet-18 of
half width with last stride 1 and the 6-part PCB head, at 96x48; the schedule is
shorter (``--epochs``), so that two runs per side fit an afternoon on a 2-core CPU.

1. The zip is extracted once (``<workdir>/market``), and the reference's own
   ``prepare.py`` lays it out as the reference expects (``market_rename/``: one
   folder per identity, names with global frames).
2. The reference side: ``train_market.py --PCB --train_all --erasing_p 0.5``, then
   ``test_st_market.py --PCB`` (its flip-and-add, per-part normalised features),
   PyTorch on this CPU, in a venv of its own (``--venv``, made with
   ``--torch_spec`` when missing; never ``requirements.txt``).
3. The jreid side: ``main.py --config=experiments/market1501_cpu.py`` with the same
   seed, epochs and decay, no warm-up (the reference has none).
4. Both features files (the reference's ``pytorch_result.mat``, jreid's
   ``features.npz``) go through jreid's features-file job
   (``experiments/eval_features.py``, the training names of ``bounding_box_train``
   for the ST model), so that only the training differs.

The reference's code is never copied into the repository: each run copies the
reference's files into ``<workdir>``, applies the patches in ``PATCHES`` (each must
match exactly once, or the benchmark stops), and prints them. They make it run on
today's PyTorch on a CPU and set the smaller network and the schedule (the list
below is appended from ``PATCHES`` itself):

"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (file, why, old text, new text): applied to copies of the reference's files.
PATCHES = [
    ("prepare.py", "read the extracted zip instead of ./raw-dataset/",
     'download_path = "./raw-dataset/DukeMTMC-reID/"', 'download_path = "{market_root}"'),
    ("model.py", "no ImageNet download; the benchmark's backbone (jreid_patch.backbone: "
     "torchvision's ResNet blocks and initialisation, at --depth/--width, last stride 1)",
     "        model_ft = models.resnet50(pretrained=True)\n        self.model = model_ft\n"
     "        self.avgpool = nn.AdaptiveAvgPool2d((self.part,1))",
     "        model_ft = jreid_patch.backbone()\n        self.model = model_ft\n"
     "        self.avgpool = nn.AdaptiveAvgPool2d((self.part,1))"),
    ("model.py", "the part classifiers take the backbone's channels (2048 for ResNet-50)",
     "ClassBlock(2048, class_num, True, False, 256)",
     "ClassBlock(jreid_patch.CHANNELS, class_num, True, False, 256)"),
    ("model.py", "import the patch module", "from torch.autograd import Variable\n",
     "from torch.autograd import Variable\nimport jreid_patch\n"),
    ("model.py", "drop the module-level debug run (it downloads an ImageNet DenseNet-121)",
     "net = ft_net_dense(751)", "net = None"),
    ("model.py", "(the debug run, continued)",
     "input = Variable(torch.FloatTensor(8, 3, 224, 224))\noutput = net(input)\n"
     "print('net output size:')\nprint(output.shape)", ""),
    ("train_market.py", "seed torch, numpy and random (the reference does not seed)",
     "from random_erasing import RandomErasing\n",
     "from random_erasing import RandomErasing\nimport jreid_patch\njreid_patch.seed()\n"),
    ("train_market.py", "the input size (PCB: 384x192)",
     "        transforms.Resize((384,192), interpolation=3),\n        transforms.RandomHorizontalFlip(),",
     "        transforms.Resize(jreid_patch.SIZE, interpolation=3),\n"
     "        transforms.RandomHorizontalFlip(),"),
    ("train_market.py", "(the input size, validation)",
     "        transforms.Resize(size=(384,192),interpolation=3), #Image.BICUBIC\n"
     "        transforms.ToTensor(),\n        transforms.Normalize([0.485, 0.456, 0.406], "
     "[0.229, 0.224, 0.225])\n        ]\n\nif opt.erasing_p>0:",
     "        transforms.Resize(size=jreid_patch.SIZE,interpolation=3), #Image.BICUBIC\n"
     "        transforms.ToTensor(),\n        transforms.Normalize([0.485, 0.456, 0.406], "
     "[0.229, 0.224, 0.225])\n        ]\n\nif opt.erasing_p>0:"),
    ("train_market.py", "skip building the global model (an ImageNet ResNet-50 download) that "
     "the PCB model then replaces", "    model = ft_net(len(class_names))\n",
     "    model = None\n"),
    ("train_market.py", "loader processes for a 2-core CPU (16 in the reference)",
     "shuffle=True, num_workers=16)", "shuffle=True, num_workers=jreid_patch.WORKERS)"),
    ("train_market.py", "the epochs (60 in the reference)", "num_epochs=60)",
     "num_epochs=jreid_patch.EPOCHS)"),
    ("train_market.py", "the decay epoch (40 in the reference); +1 because on PyTorch >= 1.1 "
     "the reference's scheduler.step() at the start of each epoch runs one epoch ahead: "
     "step_size D + 1 decays from epoch D, as PyTorch 0.4 did with step_size D",
     "lr_scheduler.StepLR(optimizer_ft, step_size=40, gamma=0.1)",
     "lr_scheduler.StepLR(optimizer_ft, step_size=jreid_patch.DECAY_EPOCH + 1, gamma=0.1)"),
    ("train_market.py", "save_network's `torch.cuda.is_available` (no call: always true) "
     "moved the network to a GPU after saving",
     "    if torch.cuda.is_available:\n", "    if torch.cuda.is_available():\n"),
    ("test_st_market.py", "the input size (PCB: 384x192)",
     "        transforms.Resize((384,192), interpolation=3),",
     "        transforms.Resize(jreid_patch.SIZE, interpolation=3),"),
    ("test_st_market.py", "import the patch module",
     "from model import ft_net, ft_net_dense, PCB, PCB_test\n",
     "from model import ft_net, ft_net_dense, PCB, PCB_test\nimport jreid_patch\n"),
    ("test_st_market.py", "loader processes for a 2-core CPU (16 in the reference)",
     "shuffle=False, num_workers=16)", "shuffle=False, num_workers=jreid_patch.WORKERS)"),
    ("test_st_market.py", "skip building the global model (an ImageNet ResNet-50 download) that "
     "the PCB model then replaces", "    model_structure = ft_net(class_num)\n",
     "    model_structure = None\n"),
    ("test_st_market.py", "the backbone's channels in the PCB feature buffer (2048)",
     "ff = torch.FloatTensor(n,2048,6).zero_()",
     "ff = torch.FloatTensor(n,jreid_patch.CHANNELS,6).zero_()"),
    ("test_st_market.py", "CPU: no .cuda()", "input_img = Variable(img.cuda())",
     "input_img = Variable(img)"),
    ("gen_st_model_market.py", "write the histograms to the working folder (not model/NAME/)",
     "scipy.io.savemat('model/'+name+'/'+'pytorch_result2.mat',result)",
     "scipy.io.savemat('pytorch_result2.mat',result)"),
]

# Written beside the patched files (the benchmark's own code, not the reference's).
PATCH_MODULE = '''"""Settings and helpers that reference_parity.py's patches call."""
import random

import numpy as np
import torch
import torch.nn as nn
from torchvision.models import resnet

DEPTH, WIDTH, SIZE = {depth}, {width}, ({height}, {width_px})
EPOCHS, DECAY_EPOCH, SEED, WORKERS = {epochs}, {decay_epoch}, {seed}, {workers}
_BLOCKS = {{18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}}
_BLOCK = resnet.Bottleneck if DEPTH >= 50 else resnet.BasicBlock
CHANNELS = WIDTH * 8 * _BLOCK.expansion


def seed():
  random.seed(SEED)
  np.random.seed(SEED)
  torch.manual_seed(SEED)


class _ResNet(resnet.ResNet):
  """torchvision's ResNet with a stem of WIDTH channels and last stride 1 (PCB)."""

  def __init__(self):
    nn.Module.__init__(self)
    self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
    self.inplanes = WIDTH
    self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(WIDTH)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    b = _BLOCKS[DEPTH]
    self.layer1 = self._make_layer(_BLOCK, WIDTH, b[0])
    self.layer2 = self._make_layer(_BLOCK, WIDTH * 2, b[1], stride=2)
    self.layer3 = self._make_layer(_BLOCK, WIDTH * 4, b[2], stride=2)
    self.layer4 = self._make_layer(_BLOCK, WIDTH * 8, b[3], stride=1)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(CHANNELS, 1000)
    for m in self.modules():  # torchvision's initialisation
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)


def backbone():
  return _ResNet()
'''

# torchvision's PyPI wheel beside the CPU torch: its C++ ops cannot load, and its import
# then fails registering two of them. The models, transforms and datasets the reference
# uses are pure Python; defining the two op schemas (only where its ops do not load) lets
# torchvision import. Put on PYTHONPATH as sitecustomize.
sys.path.insert(0, os.path.join(ROOT, "tests"))
from torch_oracle import TORCHVISION_SHIM as SITECUSTOMIZE  # pylint: disable=g-import-not-at-top,wrong-import-position  (imports no torch)


def patch_list(patches=PATCHES) -> str:
  """One line per patch: its file and why."""
  return "\n".join(f"- {f}: {why}" for f, why, _, _ in patches)


__doc__ += patch_list() + "\n"


def refuse_inside_repository(path: str) -> None:
  """Stops when ``path`` lies inside this repository: the benchmarks write the dataset's
  images, features and ranked lists there, and nothing of them may be committed."""
  path = os.path.realpath(path)
  if os.path.commonpath([path, os.path.realpath(ROOT)]) == os.path.realpath(ROOT):
    raise SystemExit(f"--workdir {path} lies inside the repository {ROOT}: features and "
                     f"images of the dataset must stay outside it")


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, cwd, log_path, env=None) -> float:
  """Runs ``cmd`` with its output in ``log_path``; returns the wall seconds; raises on failure."""
  start = time.time()
  with open(log_path, "w") as f:
    proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                          env={**os.environ, **(env or {})})
  seconds = time.time() - start
  if proc.returncode:
    tail = open(log_path, errors="replace").read()[-3000:]
    raise SystemExit(f"{' '.join(map(str, cmd))} failed (exit {proc.returncode}) in {cwd}; "
                     f"log {log_path}:\n{tail}")
  return seconds


def ensure_venv(venv: str, spec: str) -> str:
  python = os.path.join(venv, "bin", "python")
  probe = [python, "-c", "import torch, scipy, PIL, matplotlib"]
  if os.path.exists(python) and subprocess.run(probe, capture_output=True).returncode == 0:
    return python
  log(f"making the PyTorch venv {venv} ({spec})")
  subprocess.run([sys.executable, "-m", "venv", venv], check=True)
  subprocess.run([python, "-m", "pip", "install", "-q", *spec.split(), "scipy", "numpy",
                  "pillow", "matplotlib"], check=True)
  return python


def apply_patches(reference_dir: str, out: str, patches, snapshot: str,
                  fmt: dict | None = None) -> None:
  """Writes the reference's files named in ``patches`` into ``out`` with the patches
  applied, each exactly once (else stops); ``fmt`` fills the new texts' fields."""
  texts = {}
  for name, why, old, new in patches:
    if name not in texts:
      texts[name] = open(os.path.join(reference_dir, name)).read()
    count = texts[name].count(old)
    if count != 1:
      raise SystemExit(f"patch of {name} ({why}) matches {count} times, not once: is "
                       f"{reference_dir} the reference snapshot ({snapshot}) this benchmark "
                       f"was written for?")
    texts[name] = texts[name].replace(old, new.format(**fmt) if fmt else new)
  for name, text in texts.items():
    with open(os.path.join(out, name), "w") as f:
      f.write(text)


def patched_copy(reference_dir: str, out: str, fmt: dict) -> None:
  """Copies the reference's files into ``out`` and applies PATCHES (each exactly once)."""
  os.makedirs(out, exist_ok=True)
  shutil.copy(os.path.join(reference_dir, "random_erasing.py"), out)
  apply_patches(reference_dir, out, PATCHES, "b56f820", fmt)
  with open(os.path.join(out, "jreid_patch.py"), "w") as f:
    f.write(PATCH_MODULE.format(**fmt))
  with open(os.path.join(out, "sitecustomize.py"), "w") as f:
    f.write(SITECUSTOMIZE)


def extract(zip_path: str, out: str) -> str:
  root = os.path.join(out, "Market-1501-v15.09.15")
  if not os.path.isdir(os.path.join(root, "bounding_box_train")):
    log(f"extracting {zip_path}")
    with zipfile.ZipFile(zip_path) as z:
      z.extractall(out)
  return root


def st_check(python, data: str, market_root: str, out: str) -> dict:
  """The reference's gen_st_model_market.py on its prepared names against jreid's ST fit
  of bounding_box_train's names: the normalised, unsmoothed histograms [6, 6, 5000]
  (the reference's 8 x 8 table has no transits for its cameras 7 and 8)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import scipy.io  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from jreid import names as names_lib  # pylint: disable=g-import-not-at-top
  from jreid import st as st_lib  # pylint: disable=g-import-not-at-top
  run([python, "gen_st_model_market.py", f"--data_dir={data}", "--name=parity"], out,
      os.path.join(out, "gen_st_model.log"), {"PYTHONPATH": out})
  ref = scipy.io.loadmat(os.path.join(out, "pytorch_result2.mat"))["distribution"]
  train = names_lib.list_image_folder(os.path.join(market_root, "bounding_box_train")).records
  params = st_lib.STParams()
  hist, used, beyond = st_lib.transit_histograms(train.person_ids, train.cameras, train.times,
                                                 6, params)
  ours = st_lib.normalise_bins(hist, params.eps)
  outside = float(np.abs(ref[6:]).sum() + np.abs(ref[:, 6:]).sum())
  return dict(max_abs_difference=float(np.abs(ref[:6, :6] - ours).max()),
              reference_mass_outside_6_cameras=outside, transits=used, beyond_last_bin=beyond,
              pair_counts=hist.sum(axis=-1).round().astype(int).tolist())


def evaluate(features: str, train_dir: str, workdir: str, num_parts: int) -> dict:
  """jreid's features-file job (visual and st, no re-ranking) -> results.json's dict."""
  shutil.rmtree(workdir, ignore_errors=True)
  run([sys.executable, os.path.join(ROOT, "main.py"), f"--workdir={workdir}",
       f"--config={os.path.join(ROOT, 'experiments', 'eval_features.py')}",
       f"--config.features={features}", f"--config.train_dir={train_dir}",
       f"--config.num_parts={num_parts}", "--config.eval.methods=('visual','st')",
       "--config.rerank.enabled=False"], ROOT, workdir + ".log")
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def reference_side(args, python, market_root, data, seed) -> dict:
  out = os.path.join(args.workdir, f"reference_seed{seed}")
  shutil.rmtree(out, ignore_errors=True)
  fmt = dict(market_root=market_root, depth=args.depth, width=args.width,
             height=args.image_size[0], width_px=args.image_size[1], epochs=args.epochs,
             decay_epoch=args.decay_epoch, seed=seed, workers=args.workers)
  patched_copy(args.reference_dir, out, fmt)
  env = {"PYTHONPATH": out, "OMP_NUM_THREADS": str(os.cpu_count())}
  count = subprocess.run(
      [python, "-c", "import model; m = model.PCB(751); print(sum(p.numel() for p in "
       "m.parameters()) - sum(p.numel() for p in m.model.fc.parameters()))"],
      cwd=out, env={**os.environ, **env}, capture_output=True, text=True, check=True)
  params = int(count.stdout.split()[-1])
  log(f"reference seed {seed}: {params} parameters (less the backbone's unused 1000-way fc); "
      f"training {args.epochs} epochs")
  train_s = run([python, "train_market.py", "--PCB", "--gpu_ids=-1", "--name=parity",
                 "--erasing_p=0.5", "--train_all", f"--data_dir={data}"], out,
                os.path.join(out, "train.log"), env)
  text = open(os.path.join(out, "train.log")).read()
  m = re.search(r"Training complete in (\d+)m (\d+)s", text)
  loop_s = int(m.group(1)) * 60 + int(m.group(2)) if m else train_s
  log(f"reference seed {seed}: features")
  test_s = run([python, "test_st_market.py", "--PCB", "--gpu_ids=-1", "--name=parity",
                f"--test_dir={data}"], out, os.path.join(out, "test.log"), env)
  results = evaluate(os.path.join(out, "model", "parity", "pytorch_result.mat"),
                     os.path.join(market_root, "bounding_box_train"),
                     os.path.join(out, "eval"), num_parts=6)
  return dict(results=results, epoch_s=loop_s / args.epochs, train_s=train_s,
              extract_s=test_s, params=params)


def jreid_side(args, market_dir, seed) -> dict:
  out = os.path.join(args.workdir, f"jreid_seed{seed}")
  shutil.rmtree(out, ignore_errors=True)
  log(f"jreid seed {seed}: training {args.epochs} epochs")
  seconds = run([sys.executable, os.path.join(ROOT, "main.py"), f"--workdir={out}",
                 f"--config={os.path.join(ROOT, 'experiments', 'market1501_cpu.py')}",
                 f"--config.manual_dir={market_dir}",
                 f"--config.data_dir={os.path.join(args.workdir, 'tfds')}",
                 f"--config.train.seed={seed}", f"--config.train.epochs={args.epochs}",
                 f"--config.optimizer.decay_epochs=({args.decay_epoch},)",
                 "--config.optimizer.warmup_epochs=0.0",
                 f"--config.model.depth={args.depth}", f"--config.model.width={args.width}",
                 f"--config.data.image_size=({args.image_size[0]},{args.image_size[1]})",
                 "--config.eval.methods=('visual',)", "--config.rerank.enabled=False"],
                ROOT, out + ".log")
  text = open(out + ".log").read()
  m = re.search(r"training: (\d+) steps in ([\d.]+) s", text)
  loop_s = float(m.group(2)) if m else seconds
  m = re.search(r"training: (\d+) params", text)
  params = int(m.group(1)) if m else None
  results = evaluate(os.path.join(out, "features.npz"),
                     os.path.join(args.market_root, "bounding_box_train"), out + "_eval",
                     num_parts=6)
  return dict(results=results, epoch_s=loop_s / args.epochs, train_s=seconds, params=params)


def table(runs: dict) -> str:
  """The side-by-side table: per seed, means, differences (percentage points)."""
  keys = [("visual", "rank1"), ("visual", "mAP"), ("st", "rank1"), ("st", "mAP")]
  head = ["side", "seed", "visual rank-1", "visual mAP", "st rank-1", "st mAP", "s/epoch"]
  rows, means = [], {}
  for side in ("reference", "jreid"):
    for seed, r in sorted(runs[side].items()):
      rows.append([side, str(seed)] + [f"{100 * r['results'][m][k]:.2f}" for m, k in keys]
                  + [f"{r['epoch_s']:.1f}"])
    if runs[side]:
      means[side] = [statistics.mean(100 * r["results"][m][k] for r in runs[side].values())
                     for m, k in keys] + [statistics.mean(r["epoch_s"]
                                                          for r in runs[side].values())]
      rows.append([side, "mean"] + [f"{v:.2f}" for v in means[side][:4]]
                  + [f"{means[side][4]:.1f}"])
  if len(means) == 2:
    d = [j - r for j, r in zip(means["jreid"], means["reference"])]
    rows.append(["jreid - ref", ""] + [f"{v:+.2f}" for v in d[:4]]
                + [f"x{means['jreid'][4] / means['reference'][4]:.2f}"])
  widths = [max(len(x) for x in col) for col in zip(head, *rows)]
  fmt = lambda row: "  ".join(x.rjust(w) for x, w in zip(row, widths))
  return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def main():
  recipe = argparse.ArgumentParser(add_help=False)
  recipe.add_argument("--recipe", choices=("pcb", "strong"), default="pcb")
  chosen, rest = recipe.parse_known_args()
  if chosen.recipe == "strong":  # reid-strong-baseline against jreid's strong recipe
    import strong_parity  # pylint: disable=g-import-not-at-top
    sys.argv = [sys.argv[0]] + rest
    return strong_parity.main()
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--recipe", choices=("pcb", "strong"), default="pcb",
                 help="strong: benchmarks/strong_parity.py (its flags) against reid-strong-baseline")
  p.add_argument("--reference_dir", required=True)
  p.add_argument("--zip", required=True)
  p.add_argument("--workdir", default="/tmp/jreid_parity")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--sides", default="reference,jreid")
  p.add_argument("--epochs", type=int, default=4)
  p.add_argument("--decay_epoch", type=int, default=3)
  p.add_argument("--depth", type=int, default=18)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--image_size", default="96,48")
  p.add_argument("--workers", type=int, default=2, help="reference data-loader processes")
  p.add_argument("--venv", default=os.path.expanduser("~/.cache/jreid/torch_venv"))
  p.add_argument("--torch_spec", default="torch==2.13.0 torchvision==0.28.0")
  args = p.parse_args()
  args.image_size = tuple(int(x) for x in args.image_size.split(","))
  args.reference_dir = os.path.abspath(args.reference_dir)
  args.zip = os.path.abspath(args.zip)
  args.workdir = os.path.abspath(args.workdir)
  refuse_inside_repository(args.workdir)
  seeds = [int(s) for s in args.seeds.split(",")]
  sides = args.sides.split(",")
  os.makedirs(args.workdir, exist_ok=True)
  print("Patches applied to copies of the reference's files:\n" + patch_list(), flush=True)

  args.market_root = extract(args.zip, os.path.join(args.workdir, "market"))
  runs, st = {"reference": {}, "jreid": {}}, None
  if "reference" in sides:
    python = ensure_venv(args.venv, args.torch_spec)
    data = os.path.join(args.workdir, "reference_data")
    if not os.path.isdir(os.path.join(data, "dataset", "market_rename", "gallery")):
      shutil.rmtree(data, ignore_errors=True)
      patched_copy(args.reference_dir, data, dict(
          market_root=args.market_root, depth=args.depth, width=args.width, height=0,
          width_px=0, epochs=0, decay_epoch=0, seed=0, workers=0))
      log("reference prepare.py --Market")
      run([python, "prepare.py", "--Market"], data, os.path.join(data, "prepare.log"))
    st = st_check(python, os.path.join(data, "dataset", "market_rename"), args.market_root, data)
    log(f"ST model: the reference's gen_st_model_market.py against jreid's fit on the "
        f"training names: max |difference| {st['max_abs_difference']:.3g} over 6 x 6 x 5000 "
        f"bins, {st['transits']} transits")
    data = os.path.join(data, "dataset", "market_rename")
  for seed in seeds:
    if "reference" in sides:
      runs["reference"][seed] = reference_side(args, python, args.market_root, data, seed)
      log(f"reference seed {seed}: {runs['reference'][seed]['results']['visual']}")
    if "jreid" in sides:
      runs["jreid"][seed] = jreid_side(args, os.path.dirname(args.zip), seed)
      log(f"jreid seed {seed}: {runs['jreid'][seed]['results']['visual']}")
    with open(os.path.join(args.workdir, "parity.json"), "w") as f:
      json.dump(dict(args=vars(args), patches=[(f, w) for f, w, _, _ in PATCHES], runs=runs,
                     st_check=st), f, indent=1)
  print(f"\nPCB parity on the real Market-1501: ResNet-{args.depth} width {args.width}, "
        f"{args.image_size[0]}x{args.image_size[1]}, {args.epochs} epochs (x0.1 from epoch "
        f"{args.decay_epoch}), batch 32, from scratch; features of both sides evaluated by "
        f"jreid's features-file job (percent; s/epoch: the training loop's wall time)\n")
  print(table(runs))
  for side in ("reference", "jreid"):
    if runs[side]:
      print(f"{side}: {next(iter(runs[side].values()))['params']} parameters")
  if st:
    print(f"ST model: the reference's gen_st_model_market.py against jreid's fit, on the "
          f"training names: max |difference| {st['max_abs_difference']:.3g} (normalised "
          f"histograms, 6 x 6 x 5000 bins; {st['transits']} transits)")
  print(f"\n{os.path.join(args.workdir, 'parity.json')}")


if __name__ == "__main__":
  main()
