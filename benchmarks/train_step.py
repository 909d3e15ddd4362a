"""Benchmark: ReID train-step throughput, compile time, FLOPs and MFU, per device.

  python benchmarks/train_step.py [--backbone=resnet|mobilenet_v2] [--depth=50] [--width=64]
                                  [--width_mult=1.0] [--recipe=pcb|strong] [--conv=auto]
                                  [--vs_torch [--cases=...] [--out=rows.json]]
                                  [--image_size=384,192] [--batch=32]
                                  [--dtype=float32|bfloat16] [--steps=5] [--augment]
                                  [--transfer_size=128,64] [--peak_tflops=989]

--recipe pcb: the PCB head (6 parts) and cross-entropy; strong: the strong baseline's
BNNeck head, triplet plus label-smoothed cross-entropy and Adam
(``experiments/market1501_strong.apply_strong_recipe``).

Runs jreid's jitted, batch-sharded train step (``train.make_train_step``, the one
training uses) on random data over every local device; prints the jit (compile)
time, ms per step and images/s per device.

FLOPs are counted analytically from the step's jaxpr: 2 x multiply-adds of every
convolution and matrix product the traced step runs (forward, and backward as
differentiated), nothing else; the same on every platform. (XLA's compiled cost
analysis is printed too for comparison: on GPUs it leaves out the cuDNN
convolutions.) MFU = counted FLOPs / step time / --peak_tflops (per device; e.g.
989 for H100/H200 bf16 dense).

--vs_torch times the same network in PyTorch beside jreid's, alternately in rounds
(``benchmarks/torch_train_step.py``, run in the PyTorch venv ``--torch_python``, default
``~/.cache/jreid/torch_venv``; torch 2.14.1 and torchvision 0.29.1, or torch 2.13.0 CPU and
torchvision 0.28.0, never ``requirements.txt``): torchvision's ResNet or MobileNetV2 with the
same strides, head, loss and optimiser, parameter counts printed for both. ``--cases`` lists
networks as NET-RECIPE-HxW; ``--conv`` may list several ``model.conv`` values, each timed,
and "matmul-ynn": "matmul" compiled without ``layers.compiler_options`` (XLA's defaults: the
k x k convolutions YNNPACK's instead of XLA's own kernel), the options' effect alone. The
table of ``docs/cpu_training.md``:

  python benchmarks/train_step.py --vs_torch --conv=xla,matmul-ynn,auto --steps=2 --rounds=3 \
      --cases=resnet18-pcb-128x64,resnet50-pcb-128x64,resnet18-pcb-256x128,\
resnet50-pcb-256x128,mobilenet_v2-strong-128x64,mobilenet_v2-strong-256x128

--augment also times the step fed uint8 boxes at --transfer_size with the
on-device resize, flip, normalisation and erasing, against the step fed ready
float inputs, alternating the two in rounds, and prints the ratio and the share
of the step the input work takes. Needs no TensorFlow. Tiny CPU run:

  python benchmarks/train_step.py --depth=18 --image_size=96,48 --batch=16 --augment
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jreid import hostmem  # pylint: disable=g-import-not-at-top
if __name__ == "__main__":
  hostmem.reexec_with_huge_pages()  # as main.py, and before jax is imported

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top
from experiments import base  # pylint: disable=g-import-not-at-top
from experiments import market1501_strong  # pylint: disable=g-import-not-at-top
from jreid import augment  # pylint: disable=g-import-not-at-top
from jreid import sharding  # pylint: disable=g-import-not-at-top
from jreid import stages  # pylint: disable=g-import-not-at-top
from jreid import train  # pylint: disable=g-import-not-at-top
from jreid.models import heads  # pylint: disable=g-import-not-at-top
from jreid.models import layers  # pylint: disable=g-import-not-at-top

TORCH_PYTHON = os.environ.get("JREID_TORCH_PYTHON",
                              os.path.expanduser("~/.cache/jreid/torch_venv/bin/python"))


def _subjaxprs(params):
  for v in params.values():
    for x in (v if isinstance(v, (list, tuple)) else (v,)):
      if hasattr(x, "eqns"):  # a Jaxpr
        yield x
      elif hasattr(getattr(x, "jaxpr", None), "eqns"):  # a ClosedJaxpr
        yield x.jaxpr


def matmul_flops(jaxpr) -> float:
  """2 x multiply-adds of every conv_general_dilated and dot_general in ``jaxpr``
  (recursively; a scan's body counts ``length`` times, a cond's costliest branch)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
      window = np.prod([rhs[d] for d in spec[2:]])
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * rhs[spec[1]] * window
    elif name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
    elif name == "cond":
      total += max(matmul_flops(b.jaxpr) for b in eqn.params["branches"])
    else:
      inner = sum(matmul_flops(j) for j in _subjaxprs(eqn.params))
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def _xla_flops(compiled):
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    return None


def parse_case(text: str) -> dict:
  """"resnet18-pcb-128x64" / "mobilenet_v2-strong-128x64" -> the network's arguments."""
  try:
    net, recipe, size = text.rsplit("-", 2)
    h, w = (int(x) for x in size.split("x"))
  except ValueError:
    raise SystemExit(f"--cases: {text!r} is not NET-RECIPE-HxW (e.g. resnet18-pcb-128x64)")
  if recipe not in ("pcb", "strong"):
    raise SystemExit(f"--cases: {text!r}: the recipe must be pcb or strong, got {recipe!r}")
  if net == "mobilenet_v2":
    return dict(name=text, backbone=net, depth=0, recipe=recipe, size=(h, w))
  if net.startswith("resnet") and net[6:] in ("18", "34", "50"):
    return dict(name=text, backbone="resnet", depth=int(net[6:]), recipe=recipe, size=(h, w))
  raise SystemExit(f"--cases: {text!r}: the network must be resnet18, resnet34, resnet50 or "
                   f"mobilenet_v2, got {net!r}")


class JreidStep:
  """jreid's jitted train step (``train.make_train_step``) on one fixed random batch."""

  def __init__(self, args, case: dict, kinds=("float",)):
    H, W = case["size"]
    h, w = (int(x) for x in args.transfer_size.split(","))
    config = base.training_config()
    if case["recipe"] == "strong":
      market1501_strong.apply_strong_recipe(config)
    config.model.backbone, config.model.width_mult = case["backbone"], args.width_mult
    config.model.depth, config.model.dtype = case["depth"] or 50, args.dtype
    config.model.width = args.width
    config.model.conv = "matmul" if args.conv == "matmul-ynn" else args.conv
    mesh = sharding.make_mesh()
    self.devices = jax.device_count()
    self.batch = batch = args.batch * self.devices
    graphdef, state = train.create_train_state(stages.train_params(config), args.classes,
                                               steps_per_epoch=100)
    self.params = heads.count_params(nnx.merge(graphdef, state)["model"])
    self.state = jax.device_put(state, sharding.replicated(mesh))
    # The recipe's loss (strong: label smoothing and the triplet term), as training passes it.
    step = train.make_train_step(graphdef, mesh, 0, (H, W), augment.AugmentParams(),
                                 loss=config.loss.to_dict(),
                                 compiler_options=({} if args.conv == "matmul-ynn" else
                                                   stages.compiler_options(config)))
    rng = np.random.default_rng(0)
    data_sharding = sharding.data_sharding(mesh)
    label = jax.device_put(rng.integers(0, args.classes, batch).astype(np.int32), data_sharding)
    self.feeds = {"float": {"image": jax.device_put(
        rng.standard_normal((batch, H, W, 3), np.float32), data_sharding), "label": label}}
    if "uint8" in kinds:
      self.feeds["uint8"] = {"image": jax.device_put(
          rng.integers(0, 256, (batch, h, w, 3)).astype(np.uint8), data_sharding),
          "label": label}
    self.compiled, self.flops, self.jit_s = {}, {}, {}
    for kind, data in self.feeds.items():
      self.flops[kind] = matmul_flops(step.trace(self.state, data, jnp.int32(0)).jaxpr.jaxpr)
      start = time.perf_counter()
      self.compiled[kind] = step.lower(self.state, data, jnp.int32(0)).compile()
      self.jit_s[kind] = time.perf_counter() - start
      self.state, m = self.compiled[kind](self.state, data, jnp.int32(0))
      jax.block_until_ready(m)
    self.calls = 1

  def run(self, steps: int, kind: str = "float") -> float:
    """Seconds per step over ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state, m = self.compiled[kind](self.state, self.feeds[kind], jnp.int32(self.calls))
      self.calls += 1
    jax.block_until_ready(m)
    return (time.perf_counter() - start) / steps


class TorchStep:
  """``benchmarks/torch_train_step.py`` in the PyTorch venv, stepping when asked."""

  def __init__(self, args, case: dict):
    H, W = case["size"]
    if args.width != 64 or args.width_mult != 1.0 or args.dtype != "float32":
      raise SystemExit("--vs_torch builds torchvision's networks: --width=64, "
                       "--width_mult=1.0 and --dtype=float32 only")
    if not os.path.exists(args.torch_python):
      raise SystemExit(f"--vs_torch: no PyTorch venv python at {args.torch_python} (make one: "
                       f"python3 -m venv ~/.cache/jreid/torch_venv && "
                       f"~/.cache/jreid/torch_venv/bin/pip install torch==2.14.1 "
                       f"torchvision==0.29.1)")
    cmd = [args.torch_python, os.path.join(ROOT, "benchmarks", "torch_train_step.py"),
           f"--backbone={case['backbone']}", f"--depth={case['depth'] or 50}",
           f"--recipe={case['recipe']}", f"--image_size={H},{W}", f"--batch={args.batch}",
           f"--classes={args.classes}", f"--threads={args.torch_threads}"]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    hello = self._read()
    self.params, self.warmup_s = hello["params"], hello["warmup_s"]

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f"the PyTorch worker stopped (exit {self.proc.wait()}); its error is above")
    return json.loads(line)

  def _ask(self, request: dict) -> dict:
    self.proc.stdin.write(json.dumps(request) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def run(self, steps: int) -> float:
    return self._ask({"steps": steps})["seconds"]

  def profile(self, steps: int) -> dict:
    """``steps`` steps under torch.profiler: ``torch_train_step.profiled``'s answer."""
    return self._ask({"profile": steps})

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def vs_torch(args, cases) -> list[dict]:
  """Per case: PyTorch and jreid (once per --conv value) alternately, ``--rounds`` rounds of
  ``--steps`` each."""
  convs = args.conv.split(",")
  rows = []
  for case in cases:
    print(f"{case['name']}: building both sides ...", flush=True)
    torch_side = TorchStep(args, case)  # idle (blocked on its input) while jreid compiles
    jreid_sides = {}
    for conv in convs:
      jreid_sides[conv] = JreidStep(argparse.Namespace(**{**vars(args), "conv": conv}), case)
    times = {"torch": [], **{conv: [] for conv in convs}}
    for r in range(args.rounds):
      times["torch"].append(torch_side.run(args.steps))
      for conv, side in jreid_sides.items():
        times[conv].append(side.run(args.steps))
      print(f"  round {r + 1}/{args.rounds}: PyTorch {times['torch'][-1] * 1000:.0f} ms/step, "
            + ", ".join(f"jreid conv={c} {times[c][-1] * 1000:.0f}" for c in convs), flush=True)
    torch_side.close()
    t = statistics.median(times["torch"])
    some = next(iter(jreid_sides.values()))
    row = dict(case=case["name"], batch=args.batch, torch_ms=1000 * t,
               torch_img_s=args.batch / t, torch_params=torch_side.params,
               jreid_params=some.params, gflop_per_image=some.flops["float"] / some.batch / 1e9,
               torch_rounds_ms=[round(1000 * x, 1) for x in times["torch"]], jreid={})
    for conv, side in jreid_sides.items():
      j = statistics.median(times[conv])
      row["jreid"][conv] = dict(ms=1000 * j, img_s=side.batch / j, ratio=t / j,
                                gflop_s=side.flops["float"] / j / 1e9, jit_s=side.jit_s["float"],
                                rounds_ms=[round(1000 * x, 1) for x in times[conv]])
    rows.append(row)
    del jreid_sides, some, side  # free this case's compiled steps before the next case
  device = jax.devices()[0].device_kind
  print(f"\njreid vs PyTorch ({args.torch_threads} threads), float32, batch {args.batch}, "
        f"{args.rounds} alternating rounds of {args.steps} steps (medians), on "
        f"{jax.device_count()} x {device}, {os.cpu_count()} cores; ratio = PyTorch ms / jreid ms")
  print("| network-recipe-input | params jreid / PyTorch | PyTorch ms/step (img/s) | "
        + " | ".join(f"jreid conv={c} ms/step (img/s) | ratio" for c in convs) + " |")
  print("|---|---|---|" + "---|---|" * len(convs))
  for r in rows:
    cells = " | ".join(f"{r['jreid'][c]['ms']:,.0f} ({r['jreid'][c]['img_s']:.1f}) | "
                       f"{r['jreid'][c]['ratio']:.2f}x" for c in convs)
    print(f"| {r['case']} | {r['jreid_params']:,} / {r['torch_params']:,} | "
          f"{r['torch_ms']:,.0f} ({r['torch_img_s']:.1f}) | {cells} |")
  return rows


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--backbone", default="resnet", choices=("resnet", "mobilenet_v2"))
  parser.add_argument("--width_mult", type=float, default=1.0, help="mobilenet_v2's")
  parser.add_argument("--recipe", default="pcb", choices=("pcb", "strong"))
  parser.add_argument("--depth", type=int, default=50)
  parser.add_argument("--width", type=int, default=64, help="stem channels (64: the real ResNets)")
  parser.add_argument("--image_size", default="384,192")
  parser.add_argument("--transfer_size", default="128,64")
  parser.add_argument("--batch", type=int, default=32, help="per device")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--conv", default="auto",
                      help="config.model.conv: auto, xla, matmul, or matmul-ynn (matmul with "
                           "XLA's defaults); with --vs_torch a comma list: each is timed")
  parser.add_argument("--steps", type=int, default=5, help="per timing round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--classes", type=int, default=751)
  parser.add_argument("--peak_tflops", type=float, default=0.0)
  parser.add_argument("--augment", action="store_true",
                      help="also time the uint8 step with on-device augmentation")
  parser.add_argument("--vs_torch", action="store_true",
                      help="time the same network in PyTorch (its own venv) alternately")
  parser.add_argument("--cases", default="",
                      help="with --vs_torch: NET-RECIPE-HxW,... (e.g. resnet18-pcb-128x64); "
                           "default: the network of the flags above")
  parser.add_argument("--torch_python", default=TORCH_PYTHON)
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count())
  parser.add_argument("--out", default="", help="with --vs_torch: write the rows as JSON here")
  args = parser.parse_args()
  H, W = (int(x) for x in args.image_size.split(","))
  h, w = (int(x) for x in args.transfer_size.split(","))
  net_name = ("mobilenet_v2" if args.backbone == "mobilenet_v2" else f"resnet{args.depth}")
  own = dict(name=f"{net_name}-{args.recipe}-{H}x{W}", backbone=args.backbone,
             depth=args.depth, recipe=args.recipe, size=(H, W))
  for conv in args.conv.split(","):
    if conv not in (*layers.CONV_IMPLS, "matmul-ynn"):
      raise SystemExit(f"--conv: {conv!r} is not one of {(*layers.CONV_IMPLS, 'matmul-ynn')}")
  if "," in args.conv and not args.vs_torch:
    raise SystemExit("--conv lists several values only with --vs_torch")
  if args.vs_torch:
    if jax.device_count() != 1:
      raise SystemExit("--vs_torch compares one device with PyTorch's CPU threads: run it with "
                       "one JAX device")
    if args.augment:
      raise SystemExit("--vs_torch times the step fed ready float inputs: drop --augment")
    cases = [parse_case(c) for c in args.cases.split(",")] if args.cases else [own]
    rows = vs_torch(args, cases)
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"device": jax.devices()[0].device_kind, "cores": os.cpu_count(),
                   "rows": rows}, f, indent=1)
    return
  if args.cases:
    raise SystemExit("--cases needs --vs_torch")
  side = JreidStep(args, own, ("float", "uint8") if args.augment else ("float",))
  n, batch = side.devices, side.batch
  times = {k: [] for k in side.feeds}
  if args.augment:  # the input work alone, jitted on its own, as a cross-check
    params, dtype = augment.AugmentParams(), jnp.dtype(args.dtype)
    data_sharding = sharding.data_sharding(sharding.make_mesh())
    alone = jax.jit(lambda images, s: augment.train_input(
        images, augment.draw(0, s, batch, params), (H, W), params, dtype),
        in_shardings=(data_sharding, None), out_shardings=data_sharding)
    jax.block_until_ready(alone(side.feeds["uint8"]["image"], jnp.int32(0)))
    times["alone"] = []
  for _ in range(args.rounds):
    for kind in side.feeds:
      times[kind].append(side.run(args.steps, kind))
    if args.augment:
      start = time.perf_counter()
      for i in range(args.steps):
        out = alone(side.feeds["uint8"]["image"], jnp.int32(i))
      jax.block_until_ready(out)
      times["alone"].append((time.perf_counter() - start) / args.steps)

  flops, jit_s = side.flops, side.jit_s
  per_step = statistics.median(times["float"])
  device = jax.devices()[0].device_kind
  net = (f"MobileNetV2 (width x{args.width_mult:g})" if args.backbone == "mobilenet_v2"
         else f"ResNet-{args.depth} (width {args.width})")
  head = "PCB" if args.recipe == "pcb" else "BNNeck + triplet"
  print(f"{net} {head} {H}x{W} {args.dtype} conv={args.conv}, batch {args.batch}/device on "
        f"{n} x {device}: jit {jit_s['float']:.1f} s, {per_step * 1000:.1f} ms/step (median of "
        f"{args.rounds} rounds of {args.steps}), {args.batch / per_step:.1f} images/s per device")
  achieved = flops["float"] / per_step / 1e12 / n
  line = (f"  {flops['float'] / batch / 1e9:.2f} GFLOP per image (fwd+bwd), counted "
          f"analytically from the step's jaxpr (convolutions and matmuls); "
          f"{achieved:.3f} TFLOP/s per device")
  if args.peak_tflops:
    line += f", MFU {100 * achieved / args.peak_tflops:.1f}% of {args.peak_tflops} TFLOP/s"
  print(line)
  xla = _xla_flops(side.compiled["float"])
  if xla:
    print(f"  (XLA's cost analysis of the compiled step on {jax.devices()[0].platform}: "
          f"{xla / batch / 1e9:.2f} GFLOP per image; it omits cuDNN convolutions on GPUs)")
  if args.augment:
    aug = statistics.median(times["uint8"])
    extra = flops["uint8"] - flops["float"]
    print(f"  fed uint8 {h}x{w} with on-device resize, flip, normalisation and erasing: "
          f"{aug * 1000:.1f} ms/step (jit {jit_s['uint8']:.1f} s), ratio {aug / per_step:.3f} "
          f"to the step fed ready float inputs; input work {100 * (aug - per_step) / aug:.1f}% "
          f"of the step ({extra / batch / 1e6:.0f} MFLOP per image of resize matmuls) on "
          f"{device}")
    alone_s = statistics.median(times["alone"])
    print(f"  the input work jitted alone: {alone_s * 1000:.2f} ms per batch of {batch}, "
          f"{100 * alone_s / per_step:.2f}% of the step fed ready float inputs")
    print(f"  rounds (ms/step) float: {[round(t * 1000, 1) for t in times['float']]}, "
          f"uint8: {[round(t * 1000, 1) for t in times['uint8']]}, "
          f"alone: {[round(t * 1000, 2) for t in times['alone']]}")


if __name__ == "__main__":
  main()
