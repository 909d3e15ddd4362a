"""Where jreid's train step spends its time: XLA's own per-operation trace, by kind.

  python benchmarks/profile_train_step.py [--depth=18] [--image_size=128,64] [--batch=32]
      [--conv=auto|xla|matmul] [--recipe=pcb|strong] [--backbone=resnet|mobilenet_v2]
      [--steps=3] [--top=12] [--out=profile.json] [--vs_torch]

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

--vs_torch also profiles the same network, head, loss and optimiser in PyTorch
(``benchmarks/torch_train_step.py`` in its venv, as ``train_step.py --vs_torch``) with
``torch.profiler`` (self time of each operator on the calling thread; PyTorch's operators
use every thread themselves), after timing both steps unprofiled in alternating rounds.
XLA's own (Eigen) convolutions emit no trace events beyond their dispatch, so for a
ResNet jreid's k x k convolutions are timed alone, forward and both gradients
(``conv_kernels.py``'s, XLA's kernel as ``model.conv="auto"`` runs them), against
PyTorch's in its step by its profiler; the step less them is what each spends on
everything else (the 1x1 convolutions, jreid's matrix products, among it). That rest is
printed by the kinds of ``GROUPS``: PyTorch's in ms per step, jreid's in thread
time per step (and divided by XLA:CPU's worker threads, one per core). The tables of
``docs/cpu_training.md``:

  python benchmarks/profile_train_step.py --vs_torch --depth=18 --steps=3
  python benchmarks/profile_train_step.py --vs_torch --depth=50 --steps=3
"""

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from jreid import hostmem  # pylint: disable=g-import-not-at-top
if __name__ == "__main__":
  hostmem.reexec_with_huge_pages()  # as main.py and train_step.py, before jax is imported

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # pylint: disable=g-import-not-at-top

import conv_kernels  # pylint: disable=g-import-not-at-top
import train_step  # pylint: disable=g-import-not-at-top

# The kinds both sides are shown by: jreid's (``kind_of``) and PyTorch's
# (``torch_train_step.KINDS``, by scope) that do the same work.
GROUPS = (
    ("BatchNorm, ReLU, residual adds: forward",
     ("elementwise fusions forward", "reductions (BatchNorm statistics, pooling) forward"),
     ("BatchNorm, forward", "ReLU, forward", "adds (residual branches, gradient sums), forward")),
    ("the same, written transposed for kernel gradients (forward)",
     ("elementwise fusions forward, written transposed for kernel gradients",), ()),
    ("BatchNorm, ReLU, residual adds: backward",
     ("elementwise fusions backward", "reductions (BatchNorm statistics, pooling) backward",
      "elementwise fusions backward, written transposed for kernel gradients"),
     ("BatchNorm, backward", "ReLU, backward",
      "adds (residual branches, gradient sums), backward")),
    ("kernel flips, copies and transposes",
     ("kernel flips (rev) for input gradients", "copies and transposes"),
     ("copies and transposes, forward", "copies and transposes, backward")),
    ("1x1 convolutions and the heads' matrix products (jreid: matrix products)",
     ("matrix products forward (1x1 convolutions, heads)",
      "matrix products backward (input and kernel gradients)"),
     ("1x1 convolutions, forward", "1x1 convolutions, backward",
      "matrix products (heads), forward", "matrix products (heads), backward")),
    ("max-pool, forward and backward", ("max-pool (reduce-window, its indices and scatter)",),
     ("max-pool, forward", "max-pool, backward")),
    ("optimiser update", ("optimiser update",), ("optimiser update",)),
    ("allocation, fills, slices, pads, other",
     ("slices, concatenations, pads",),
     ("allocation and fills, forward", "allocation and fills, backward",
      "other operators, forward", "other operators, backward")),
)
CONVOLUTIONS = ("convolution forward", "convolution input gradient",
                "convolution kernel gradient")
TORCH_CONVOLUTIONS = ("k x k convolutions, forward", "k x k convolutions, backward")


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
  if "optax" in name or "/update" in name or "optimizer" in name.lower() or (
      name and "jvp(" not in name and op != "copy"):
    # the loss and its gradient are traced under jvp(...); what is not, is the update
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
  if "transpose" in inner and dims and len(dims[0]) == 4 and dims[0][-1] == batch:
    # [C, H, W, B]: the input layout of XLA's kernel gradient, the elementwise work fused in
    return ("elementwise fusions " + ("backward" if backward else "forward")
            + ", written transposed for kernel gradients")
  return "elementwise fusions " + ("backward" if backward else "forward")


def side_by_side(name: str, steps_s: tuple[float, float], profiled_s: tuple[float, float],
                 kinds_s: dict, torch: dict, threads: int,
                 convs_s: tuple[float, float] | None) -> str:
  """Markdown tables of both sides: the step (``steps_s``: jreid's and PyTorch's seconds
  unprofiled; ``profiled_s``: under the profilers), its convolutions timed alone
  (``convs_s``, or None) and the rest; then the rest by ``GROUPS`` (``kinds_s``: jreid's
  seconds by ``kind_of``; ``torch``: ``torch_train_step.profiled``'s answer), in ms per
  step as each profiler counts it (jreid: thread time; also divided by ``threads``)."""
  jw, tw = (1000 * t for t in steps_s)
  j_ms = {k: v * 1000 for k, v in kinds_s.items()}
  t_ms = torch["kinds_ms"]
  t_conv = sum(t_ms.get(k, 0.0) for k in TORCH_CONVOLUTIONS)
  lines = [f"| {name} | jreid ms/step | PyTorch ms/step | PyTorch / jreid |",
           "|---|---|---|---|",
           f"| the step | {jw:,.0f} | {tw:,.0f} | {tw / jw:.2f}x |",
           f"| the step under the profilers | {1000 * profiled_s[0]:,.0f} | "
           f"{1000 * profiled_s[1]:,.0f} | |"]
  if convs_s:
    jc = 1000 * convs_s[0]
    lines += [f"| its k x k convolutions (jreid: alone, forward and both gradients; PyTorch: "
              f"in the step, its profiler) | {jc:,.0f} | {t_conv:,.0f} | {t_conv / jc:.2f}x |",
              f"| the step less those | {jw - jc:,.0f} | {tw - t_conv:,.0f} | "
              f"{(tw - t_conv) / (jw - jc):.2f}x |",
              f"| (PyTorch's k x k convolutions alone, as jreid's) | | {1000 * convs_s[1]:,.0f} | |"]
  else:
    lines.append(f"| (PyTorch's profiler: its k x k convolutions in the step) | | "
                 f"{t_conv:,.0f} | |")
  known_j = {k for _, js, _ in GROUPS for k in js} | set(CONVOLUTIONS)
  known_t = {k for _, _, ts in GROUPS for k in ts} | set(TORCH_CONVOLUTIONS)
  rows = [(label, sum(j_ms.get(k, 0.0) for k in js), sum(t_ms.get(k, 0.0) for k in ts))
          for label, js, ts in GROUPS]
  unknown = (sum(v for k, v in j_ms.items() if k not in known_j),
             sum(v for k, v in t_ms.items() if k not in known_t))
  if any(unknown):
    rows.append(("not grouped", *unknown))
  lines += ["", f"| the rest, by kind | jreid thread ms/step (/ {threads}) | "
            f"PyTorch ms/step |", "|---|---|---|"]
  for label, j, t in rows:
    lines.append(f"| {label} | {j:,.0f} ({j / threads:,.0f}) | {t:,.0f} |")
  j_all, t_all = sum(j for _, j, _ in rows), sum(t for _, _, t in rows)
  lines.append(f"| **sum** | **{j_all:,.0f}** ({j_all / threads:,.0f}) | **{t_all:,.0f}** |")
  lines.append(f"| (jreid's traced convolution dispatch, not counted above) | "
               f"{sum(j_ms.get(k, 0.0) for k in CONVOLUTIONS):,.0f} | |")
  return "\n".join(lines)


def convolutions_alone(args, depth: int, size: tuple[int, int], rounds: int = 3,
                       steps: int = 3) -> tuple[float, float]:
  """Seconds of one pass over the network's k x k convolutions, forward and both
  gradients, each alone (``conv_kernels.py``: jreid's as ``model.conv="auto"`` runs them
  on a CPU, and PyTorch's), weighted by how often each occurs; medians of alternating
  rounds. (The stem's input gradient, which a step does not compute, is included.)"""
  specs = [s for s in conv_kernels.resnet_convs(depth, *size, args.batch) if s["k"] > 1]
  jreid = [conv_kernels.jax_fn(s, conv_kernels.step_impl(s)) for s in specs]
  torch_side = conv_kernels.TorchConvs(specs, args.torch_python, args.torch_threads)
  j_t, t_t = [], []
  for _ in range(rounds):
    j_t.append(sum(run(steps) * s["count"] for run, s in zip(jreid, specs)))
    t_t.append(sum(t * s["count"] for t, s in zip(torch_side.run(steps), specs)))
  torch_side.close()
  return statistics.median(j_t), statistics.median(t_t)


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
  p.add_argument("--vs_torch", action="store_true",
                 help="profile the same network in PyTorch too (its own venv) and print both")
  p.add_argument("--torch_python", default=train_step.TORCH_PYTHON)
  p.add_argument("--torch_threads", type=int, default=os.cpu_count())
  args = p.parse_args()
  if args.vs_torch and jax.device_count() != 1:
    raise SystemExit("--vs_torch compares one device with PyTorch's CPU threads: run it with "
                     "one JAX device")
  H, W = (int(x) for x in args.image_size.split(","))
  case = dict(name=f"{args.backbone}{args.depth if args.backbone == 'resnet' else ''}-"
                   f"{args.recipe}-{H}x{W}", backbone=args.backbone, depth=args.depth,
              recipe=args.recipe, size=(H, W))
  torch_side = train_step.TorchStep(args, case) if args.vs_torch else None
  side = train_step.JreidStep(args, case)
  side.run(2)
  if torch_side is not None:  # both unprofiled first, alternating
    rounds = [(side.run(args.steps), torch_side.run(args.steps)) for _ in range(3)]
    steps_s = tuple(statistics.median(r[i] for r in rounds) for i in (0, 1))
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
  result = {"case": case["name"], "conv": args.conv, "wall_ms": wall * 1000,
            "kinds_ms": {k: v * 1000 for k, v in per_kind.items()}}
  if torch_side is not None:
    del side  # its buffers, before PyTorch's step runs
    torch_side.run(2)
    torch = torch_side.profile(args.steps)
    torch_side.close()
    print(f"\nPyTorch ({args.torch_threads} threads), the {args.top} costliest operators "
          f"(self time, ms/step):")
    for op, t in torch["top_ms"][:args.top]:
      print(f"  {t:7.1f} ms  {op}")
    convs = None
    if args.backbone == "resnet" and args.conv in ("auto", "matmul") and \
        args.width == 64 and jax.default_backend() == "cpu":
      print("timing the network's convolutions alone, both sides ...", flush=True)
      convs = convolutions_alone(args, args.depth, (H, W))
    print()
    print(side_by_side(case["name"], steps_s, (wall, torch["seconds"]), per_kind, torch,
                       os.cpu_count(), convs))
    result["torch"] = torch
    result["steps_s"] = steps_s
    result["convolutions_alone_s"] = convs
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
