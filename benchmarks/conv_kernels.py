"""GFLOP/s of single convolutions, forward and backward: XLA's convolution, jreid's
matrix-product form, and PyTorch's (oneDNN) on the same CPU.

  python benchmarks/conv_kernels.py [--net=resnet18|resnet50] [--image_size=128,64]
      [--batch=32] [--rounds=5] [--vs_torch] [--out=conv_kernels.json]

For each distinct convolution of the network (ResNet-18 or -50 with last stride 1;
input size, channels, kernel, stride) times one jitted function that computes the
convolution and both its gradients (input and kernel, for a fixed cotangent): the
work one layer does in a training step, without BatchNorm or activations. Each of
``layers.Conv``'s computations is timed ("xla": ``lax.conv_general_dilated`` with XLA's
defaults, YNNPACK's kernel on a CPU; "eigen": the same compiled with
``layers.CPU_COMPILER_OPTIONS``, XLA's Eigen kernel, what ``model.conv="auto"`` runs for
k x k convolutions on a CPU; "matmul": ``layers.conv_matmul``), and with --vs_torch the same convolution in PyTorch
(``torch.nn.functional.conv2d`` forward and ``backward``, channels-first, in the PyTorch
venv), alternating the sides in rounds. Prints, per layer, ms and GFLOP/s
(3 x 2 x the multiply-adds of the forward), and the whole network's layers weighted
by how often each occurs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jreid.models import layers  # pylint: disable=g-import-not-at-top

TORCH_PYTHON = os.environ.get("JREID_TORCH_PYTHON",
                              os.path.expanduser("~/.cache/jreid/torch_venv/bin/python"))

# Runs in the PyTorch venv: reads one JSON line of layers, then one line per round.
TORCH_WORKER = r'''
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
specs = json.loads(sys.stdin.readline())
runs = []
for s in specs:
  x = torch.randn(s["batch"], s["cin"], s["h"], s["w"], requires_grad=True)
  k = torch.randn(s["cout"], s["cin"], s["k"], s["k"], requires_grad=True)
  def run(x=x, k=k, s=s):
    y = torch.nn.functional.conv2d(x, k, stride=s["stride"], padding=(s["k"] - 1) // 2)
    g = torch.ones_like(y)
    x.grad = k.grad = None
    y.backward(g)
    return k.grad
  run(); run()
  runs.append(run)
print("ready", flush=True)
for line in sys.stdin:
  n = json.loads(line)["steps"]
  out = []
  for run in runs:
    start = time.perf_counter()
    for _ in range(n):
      run()
    out.append((time.perf_counter() - start) / n)
  print(json.dumps(out), flush=True)
'''


def resnet_convs(depth: int, h: int, w: int, batch: int) -> list[dict]:
  """The distinct convolutions of ResNet-depth (last stride 1) at h x w input, with counts."""
  convs = {}

  def add(cin, cout, k, stride, hh, ww):
    key = (cin, cout, k, stride, hh, ww)
    convs[key] = convs.get(key, 0) + 1
    return (hh - 1) // stride + 1, (ww - 1) // stride + 1

  hh, ww = add(3, 64, 7, 2, h, w)
  hh, ww = (hh - 1) // 2 + 1, (ww - 1) // 2 + 1  # max-pool
  blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
  cin = 64
  for i, n in enumerate(blocks):
    width = 64 * 2 ** i
    for j in range(n):
      stride = (1 if i in (0, 3) else 2) if j == 0 else 1
      if depth >= 50:
        cout = 4 * width
        add(cin, width, 1, 1, hh, ww)
        h2, w2 = add(width, width, 3, stride, hh, ww)
        add(width, cout, 1, 1, h2, w2)
      else:
        cout = width
        h2, w2 = add(cin, width, 3, stride, hh, ww)
        add(width, width, 3, 1, h2, w2)
      if stride != 1 or cin != cout:
        add(cin, cout, 1, stride, hh, ww)
      cin, hh, ww = cout, h2, w2
  return [dict(cin=c, cout=o, k=k, stride=s, h=a, w=b, batch=batch, count=n,
               flops=3 * 2 * batch * ((a - 1) // s + 1) * ((b - 1) // s + 1) * c * o * k * k)
          for (c, o, k, s, a, b), n in convs.items()]


def jax_fn(spec: dict, impl: str):
  """A timer of one convolution and its gradients: "xla", "eigen" or "matmul" (above)."""
  pad, stride = (spec["k"] - 1) // 2, spec["stride"]

  def conv(x, kernel):
    if impl == "matmul":
      return layers.conv_matmul(x, kernel, stride, pad)
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad),) * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def fwd_bwd(x, kernel):
    y, vjp = jax.vjp(conv, x, kernel)
    return vjp(jnp.ones_like(y))

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((spec["batch"], spec["h"], spec["w"], spec["cin"])),
                  jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((spec["k"], spec["k"], spec["cin"], spec["cout"])),
                       jnp.float32)
  f = jax.jit(fwd_bwd, compiler_options=layers.CPU_COMPILER_OPTIONS if impl == "eigen" else None)
  jax.block_until_ready(f(x, kernel))

  def run(n):
    start = time.perf_counter()
    for _ in range(n):
      out = f(x, kernel)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n
  return run


def step_impl(spec: dict) -> str:
  """What ``model.conv="auto"`` runs for this convolution on a CPU: "matmul" (1x1) or
  "eigen"."""
  return "matmul" if spec["k"] == 1 else "eigen"


class TorchConvs:
  """``TORCH_WORKER`` in the PyTorch venv, timing ``specs``' convolutions when asked."""

  def __init__(self, specs: list[dict], python: str, threads: int):
    if not os.path.exists(python):
      raise SystemExit(f"--vs_torch: no PyTorch venv python at {python}")
    self.proc = subprocess.Popen([python, "-c", TORCH_WORKER, str(threads)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.proc.stdin.write(json.dumps(specs) + "\n")
    self.proc.stdin.flush()
    if self.proc.stdout.readline().strip() != "ready":
      raise SystemExit(f"the PyTorch worker stopped (exit {self.proc.wait()}); its error is above")

  def run(self, steps: int) -> list[float]:
    """Seconds per call of each convolution, ``steps`` calls each."""
    self.proc.stdin.write(json.dumps({"steps": steps}) + "\n")
    self.proc.stdin.flush()
    return json.loads(self.proc.stdout.readline())

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--net", default="resnet18", choices=("resnet18", "resnet50"))
  p.add_argument("--image_size", default="128,64")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--vs_torch", action="store_true")
  p.add_argument("--torch_python", default=TORCH_PYTHON)
  p.add_argument("--torch_threads", type=int, default=os.cpu_count())
  p.add_argument("--out", default="")
  args = p.parse_args()
  h, w = (int(x) for x in args.image_size.split(","))
  specs = resnet_convs(int(args.net[6:]), h, w, args.batch)
  sides = {impl: [jax_fn(s, impl) for s in specs] for impl in ("xla", "eigen", "matmul")}
  torch_side = TorchConvs(specs, args.torch_python, args.torch_threads) if args.vs_torch else None
  times = {impl: [[] for _ in specs] for impl in (*sides, *(("torch",) if torch_side else ()))}
  for _ in range(args.rounds):
    for impl, runs in sides.items():
      for i, run in enumerate(runs):
        times[impl][i].append(run(args.steps))
    if torch_side:
      for i, t in enumerate(torch_side.run(args.steps)):
        times["torch"][i].append(t)
  if torch_side:
    torch_side.close()
  med = {impl: [statistics.median(t) for t in per] for impl, per in times.items()}
  impls = list(med)
  print(f"{args.net} (last stride 1) at {h}x{w}, batch {args.batch}: each convolution forward "
        f"+ input and kernel gradients, median of {args.rounds} rounds of {args.steps}, "
        f"{os.cpu_count()} cores, {jax.devices()[0].device_kind}")
  print("| cin -> cout, k/s, input | x | " + " | ".join(f"{i} ms (GFLOP/s)" for i in impls) + " |")
  print("|---|---|" + "---|" * len(impls))
  for i, s in enumerate(specs):
    cells = " | ".join(f"{1000 * med[m][i]:.1f} ({s['flops'] / med[m][i] / 1e9:.0f})"
                       for m in impls)
    print(f"| {s['cin']} -> {s['cout']}, {s['k']}/{s['stride']}, {s['h']}x{s['w']} | "
          f"{s['count']} | {cells} |")
  flops = sum(s["flops"] * s["count"] for s in specs)
  totals = {m: sum(med[m][i] * s["count"] for i, s in enumerate(specs)) for m in impls}
  print("| whole network | | " + " | ".join(
      f"{1000 * totals[m]:.0f} ({flops / totals[m] / 1e9:.0f})" for m in impls) + " |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"net": args.net, "size": [h, w], "batch": args.batch, "layers": specs,
                 "median_s": med, "total_s": totals}, f, indent=1)


if __name__ == "__main__":
  main()
