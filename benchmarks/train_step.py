"""Benchmark: ReID train-step throughput, compile time, FLOPs and MFU, per device.

  python benchmarks/train_step.py [--backbone=resnet|mobilenet_v2] [--depth=50] [--width=64]
                                  [--width_mult=1.0] [--recipe=pcb|strong]
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

--augment also times the step fed uint8 boxes at --transfer_size with the
on-device resize, flip, normalisation and erasing, against the step fed ready
float inputs, alternating the two in rounds, and prints the ratio and the share
of the step the input work takes. Needs no TensorFlow. Tiny CPU run:

  python benchmarks/train_step.py --depth=18 --image_size=96,48 --batch=16 --augment
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import base  # pylint: disable=g-import-not-at-top
from experiments import market1501_strong  # pylint: disable=g-import-not-at-top
from jreid import augment  # pylint: disable=g-import-not-at-top
from jreid import sharding  # pylint: disable=g-import-not-at-top
from jreid import train  # pylint: disable=g-import-not-at-top


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
  parser.add_argument("--steps", type=int, default=5, help="per timing round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--classes", type=int, default=751)
  parser.add_argument("--peak_tflops", type=float, default=0.0)
  parser.add_argument("--augment", action="store_true",
                      help="also time the uint8 step with on-device augmentation")
  args = parser.parse_args()
  H, W = (int(x) for x in args.image_size.split(","))
  h, w = (int(x) for x in args.transfer_size.split(","))
  config = base.training_config()
  if args.recipe == "strong":
    market1501_strong.apply_strong_recipe(config)
  config.model.backbone, config.model.width_mult = args.backbone, args.width_mult
  config.model.depth, config.model.dtype = args.depth, args.dtype
  config.model.width = args.width
  mesh = sharding.make_mesh()
  n = jax.device_count()
  batch = args.batch * n
  graphdef, state = train.create_train_state(config, args.classes, steps_per_epoch=100)
  state = jax.device_put(state, sharding.replicated(mesh))
  step = train.make_train_step(graphdef, mesh, 0, (H, W), augment.AugmentParams())
  rng = np.random.default_rng(0)
  data_sharding = sharding.data_sharding(mesh)
  label = jax.device_put(rng.integers(0, args.classes, batch).astype(np.int32), data_sharding)
  feeds = {"float": {"image": jax.device_put(rng.standard_normal((batch, H, W, 3), np.float32),
                                             data_sharding), "label": label}}
  if args.augment:
    feeds["uint8"] = {"image": jax.device_put(
        rng.integers(0, 256, (batch, h, w, 3)).astype(np.uint8), data_sharding), "label": label}

  compiled, flops, jit_s, times = {}, {}, {}, {k: [] for k in feeds}
  for kind, data in feeds.items():
    flops[kind] = matmul_flops(jax.make_jaxpr(step)(state, data, jnp.int32(0)).jaxpr)
    start = time.perf_counter()
    compiled[kind] = step.lower(state, data, jnp.int32(0)).compile()
    jit_s[kind] = time.perf_counter() - start
    state, m = compiled[kind](state, data, jnp.int32(0))
    jax.block_until_ready(m)
  if args.augment:  # the input work alone, jitted on its own, as a cross-check
    params, dtype = augment.AugmentParams(), jnp.dtype(args.dtype)
    alone = jax.jit(lambda images, s: augment.train_input(
        images, augment.draw(0, s, batch, params), (H, W), params, dtype),
        in_shardings=(data_sharding, None), out_shardings=data_sharding)
    jax.block_until_ready(alone(feeds["uint8"]["image"], jnp.int32(0)))
    times["alone"] = []
  for r in range(args.rounds):
    for kind, data in feeds.items():
      start = time.perf_counter()
      for i in range(args.steps):
        state, m = compiled[kind](state, data, jnp.int32(1 + r * args.steps + i))
      jax.block_until_ready(m)
      times[kind].append((time.perf_counter() - start) / args.steps)
    if args.augment:
      start = time.perf_counter()
      for i in range(args.steps):
        out = alone(feeds["uint8"]["image"], jnp.int32(i))
      jax.block_until_ready(out)
      times["alone"].append((time.perf_counter() - start) / args.steps)

  per_step = statistics.median(times["float"])
  device = jax.devices()[0].device_kind
  net = (f"MobileNetV2 (width x{args.width_mult:g})" if args.backbone == "mobilenet_v2"
         else f"ResNet-{args.depth} (width {args.width})")
  head = "PCB" if args.recipe == "pcb" else "BNNeck + triplet"
  print(f"{net} {head} {H}x{W} {args.dtype}, batch {args.batch}/device on {n} x "
        f"{device}: jit {jit_s['float']:.1f} s, {per_step * 1000:.1f} ms/step (median of "
        f"{args.rounds} rounds of {args.steps}), {args.batch / per_step:.1f} images/s per device")
  achieved = flops["float"] / per_step / 1e12 / n
  line = (f"  {flops['float'] / batch / 1e9:.2f} GFLOP per image (fwd+bwd), counted "
          f"analytically from the step's jaxpr (convolutions and matmuls); "
          f"{achieved:.3f} TFLOP/s per device")
  if args.peak_tflops:
    line += f", MFU {100 * achieved / args.peak_tflops:.1f}% of {args.peak_tflops} TFLOP/s"
  print(line)
  xla = _xla_flops(compiled["float"])
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
