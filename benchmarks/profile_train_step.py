"""Where jreid's train step spends its time: XLA's own per-operation trace, by kind.

  python benchmarks/profile_train_step.py [--depth=18] [--image_size=128,64] [--batch=32]
      [--conv=auto|xla|matmul] [--recipe=pcb|strong] [--backbone=resnet|mobilenet_v2]
      [--steps=3] [--top=12] [--out=profile.json]

Runs the step of ``benchmarks/train_step.py`` (``train.make_train_step``, random data)
under the JAX profiler with XLA:CPU's per-thunk trace events on
(``--xla_cpu_enable_xprof_traceme``), reads the trace back
(``jax.profiler.ProfileData``) and joins each event to its HLO instruction in the
compiled step, whose metadata names the JAX operation and whether it lies in the
forward pass, the backward pass (``transpose(jvp(...))``) or the optimiser update.

Prints, per step: the time in each kind of operation (convolution forward, its input
and kernel gradients, matrix products forward and backward, BatchNorm statistics and
other fused elementwise work, the optimiser, copies), the share of the step and the
GFLOP/s of the compute-bound kinds; then the costliest single operations; then the
wall time of the step and how much of it no operation covers (host overhead and
threads waiting). With two worker threads, per-thread event times add up to more
than the wall time; shares are of their sum.
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import train_step  # pylint: disable=g-import-not-at-top


def _shape_elems(text: str) -> list[tuple[int, ...]]:
  return [tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"f32\[([\d,]*)\]", text)]


def hlo_index(hlo_text: str) -> dict[str, dict]:
  """HLO instruction name -> {opcode, op_name, flops} of the compiled module."""
  index = {}
  comp_of = {}
  current = None
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?\s*->.*\{\s*$", line)
    if m and "=" not in line.split("{")[0]:
      current = m.group(1)
      continue
    m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$", line)
    if not m:
      continue
    name, out_shape, opcode, rest = m.groups()
    op_name = re.search(r'op_name="([^"]*)"', rest)
    calls = re.search(r"calls=%?([\w.\-]+)", rest)
    index[name] = dict(opcode=opcode, op_name=op_name.group(1) if op_name else "",
                       out=out_shape, rest=rest, computation=current,
                       calls=calls.group(1) if calls else None)
    comp_of.setdefault(current, []).append(name)
  for name, info in index.items():  # a fusion's kind: what it fuses
    if info["opcode"] == "fusion" and info["calls"] in comp_of:
      inner = [index[n] for n in comp_of[info["calls"]]]
      info["inner"] = [i["opcode"] for i in inner]
      named = [i["op_name"] for i in inner if i["op_name"]]
      if not info["op_name"] and named:
        info["op_name"] = named[-1]
  return index


def kind_of(info: dict, batch: int) -> str:
  """The kind of one compiled HLO instruction (see the module docstring)."""
  op, name, inner = info["opcode"], info["op_name"], info.get("inner", [])
  backward = "transpose(" in name
  dims = _shape_elems(info["out"])
  batch_major = bool(dims) and len(dims[0]) == 4 and dims[0][0] == batch
  if "optax" in name or "/update" in name or "optimizer" in name.lower():
    return "optimiser update"
  if op == "convolution" or "convolution" in inner:
    if not batch_major:
      return "convolution kernel gradient"
    return "convolution input gradient" if backward else "convolution forward"
  if op == "dot" or "dot" in inner:
    return ("matrix products backward (input and kernel gradients)" if backward
            else "matrix products forward (1x1 convolutions, heads)")
  if "reduce-window" in inner or op == "reduce-window" or "select-and-scatter" in inner \
      or "iota" in inner or op == "iota" or "reduce_window" in name:
    return "max-pool (reduce-window, its indices and scatter)"
  if "rev" in inner or name.endswith("/rev"):
    return "kernel flips (rev) for input gradients"
  if op in ("copy", "transpose") or info.get("inner") in (["copy"], ["transpose"]) \
      or ("transpose" in inner and len(inner) <= 3):
    return "copies and transposes"
  if "reduce" in inner or op == "reduce":
    return "reductions (BatchNorm statistics, pooling) " + ("backward" if backward else "forward")
  if "concatenate" in inner or op == "concatenate" or "slice" in inner:
    return "slices, concatenations, pads"
  return "elementwise fusions " + ("backward" if backward else "forward")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--backbone", default="resnet", choices=("resnet", "mobilenet_v2"))
  p.add_argument("--depth", type=int, default=18)
  p.add_argument("--recipe", default="pcb", choices=("pcb", "strong"))
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--width_mult", type=float, default=1.0)
  p.add_argument("--image_size", default="128,64")
  p.add_argument("--transfer_size", default="128,64")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--conv", default="auto")
  p.add_argument("--classes", type=int, default=751)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=12)
  p.add_argument("--out", default="")
  args = p.parse_args()
  H, W = (int(x) for x in args.image_size.split(","))
  case = dict(name=f"{args.backbone}{args.depth if args.backbone == 'resnet' else ''}-"
                   f"{args.recipe}-{H}x{W}", backbone=args.backbone, depth=args.depth,
              recipe=args.recipe, size=(H, W))
  side = train_step.JreidStep(args, case)
  side.run(2)
  index = hlo_index(side.compiled["float"].as_text())
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    with jax.profiler.trace(tmp):
      side.run(args.steps)
    wall = (time.perf_counter() - start) / args.steps
    path = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)[0]
    profile = jax.profiler.ProfileData.from_file(path)
  per_kind = collections.defaultdict(float)
  per_op = collections.defaultdict(float)
  total = 0.0
  for plane in profile.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:
      for event in line.events:
        name = event.name
        info = index.get(name)
        if info is None:
          continue  # runtime and Python events; only HLO operations are counted
        seconds = event.duration_ns / 1e9 / args.steps
        kind = kind_of(info, side.batch)
        per_kind[kind] += seconds
        per_op[(name, kind, info["op_name"].split("/")[-1], info["out"][:60])] += seconds
        total += seconds
  print(f"{case['name']} conv={args.conv}, batch {args.batch}, {os.cpu_count()} cores: wall "
        f"{wall * 1000:.0f} ms/step; HLO operations {total * 1000:.0f} ms of thread time per "
        f"step")
  print("| kind | ms/step | share |")
  print("|---|---|---|")
  for kind, t in sorted(per_kind.items(), key=lambda kv: -kv[1]):
    print(f"| {kind} | {t * 1000:.0f} | {100 * t / total:.1f}% |")
  print(f"\nthe {args.top} costliest operations:")
  for (name, kind, op, out), t in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
    print(f"  {t * 1000:7.1f} ms  {name:28s} {kind:32s} {op:28s} {out}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"case": case["name"], "conv": args.conv, "wall_ms": wall * 1000,
                 "kinds_ms": {k: v * 1000 for k, v in per_kind.items()}}, f, indent=1)


if __name__ == "__main__":
  main()
