"""Benchmark: ResNet PCB train-step throughput and compile time, per device.

  python benchmarks/train_step.py [--depth=50] [--image_size=384,192] [--batch=32]
                                  [--dtype=float32|bfloat16] [--steps=5]

Runs jreid's jitted, batch-sharded train step (the one train.py uses) on random
data over every local device; prints jit (compile) time, images/s per device and,
from the compiled step's FLOP count (XLA cost analysis), the achieved TFLOP/s and
the model FLOPs utilisation against --peak_tflops (per device; e.g. 989 for H100
bf16 dense) when given. Needs no TensorFlow.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import base  # pylint: disable=g-import-not-at-top
from jreid import train  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--depth", type=int, default=50)
  parser.add_argument("--image_size", default="384,192")
  parser.add_argument("--batch", type=int, default=32, help="per device")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--classes", type=int, default=751)
  parser.add_argument("--peak_tflops", type=float, default=0.0)
  args = parser.parse_args()
  H, W = (int(x) for x in args.image_size.split(","))
  config = base.training_config()
  config.model.depth, config.model.dtype = args.depth, args.dtype
  mesh = train.make_mesh()
  n = jax.device_count()
  batch = args.batch * n
  model = train.build_model(config, args.classes)
  model.train()
  opt = nnx.Optimizer(model, train.make_optimizer(config, 100), wrt=nnx.Param)
  graphdef, state = nnx.split((model, opt))
  state = jax.device_put(state, train.replicated(mesh))
  step = train.make_train_step(graphdef, mesh, 0)
  rng = np.random.default_rng(0)
  data = {"image": jax.device_put(rng.standard_normal((batch, H, W, 3), np.float32),
                                  train.data_sharding(mesh)),
          "label": jax.device_put(rng.integers(0, args.classes, batch).astype(np.int32),
                                  train.data_sharding(mesh))}
  start = time.time()
  compiled = step.lower(state, data, jnp.int32(0)).compile()
  jit_s = time.time() - start
  flops = None
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    pass
  state, m = compiled(state, data, jnp.int32(0))
  jax.block_until_ready(m)
  start = time.time()
  for i in range(args.steps):
    state, m = compiled(state, data, jnp.int32(i + 1))
  jax.block_until_ready(m)
  per_step = (time.time() - start) / args.steps
  per_device = args.batch / per_step
  print(f"ResNet-{args.depth} PCB {H}x{W} {args.dtype}, batch {args.batch}/device on {n} x "
        f"{jax.devices()[0].device_kind}: jit {jit_s:.1f} s, {per_step * 1000:.0f} ms/step, "
        f"{per_device:.1f} images/s per device")
  if flops:
    achieved = flops / per_step / 1e12 / n
    line = f"  {flops / batch / 1e9:.1f} GFLOP per image (fwd+bwd), {achieved:.2f} TFLOP/s per device"
    if args.peak_tflops:
      line += f", MFU {100 * achieved / args.peak_tflops:.1f}% of {args.peak_tflops} TFLOP/s"
    print(line)


if __name__ == "__main__":
  main()
