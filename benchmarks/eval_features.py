"""Benchmark: the whole evaluate-from-features job at Market-1501 scale (and 500k).

  python benchmarks/eval_features.py [--big_gallery=500000] [--dims=2048]

Generates a Market-shaped world (3,368 queries, 19,732 gallery, 12,936 training
names, 751 ids, 2048-d features), then times, each in its own process:
  * jreid: `python main.py --config=experiments/eval_features.py ...`
  * the straightforward numpy implementation (benchmarks/numpy_reference.py)
and prints wall time, peak RSS and the ratio, and checks both give the same
numbers. With --big_gallery it adds that many distractors (id 0) to the gallery
and times jreid alone (peak memory is the point there).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jreid import names  # pylint: disable=g-import-not-at-top


def make_world(out, queries, gallery, train, ids, dims, distractors, seed=0, noise=4.0):
  """Identities walk camera routes; features = identity centre + noise (visual mAP well
  below 1 at 2048-d, so that rankings are not trivial)."""
  rng = np.random.default_rng(seed)
  train_dir = os.path.join(out, "bounding_box_train")
  os.makedirs(train_dir, exist_ok=True)
  start = rng.integers(1000, 300_000, ids + 1)
  transit = rng.integers(500, 4000, 7)

  def sample(n, id_low):
    pid = rng.integers(id_low, ids + 1, n)
    cam = rng.integers(1, 7, n)
    t = start[pid] + transit[cam] * cam + rng.integers(-200, 200, n)
    return pid, cam, np.clip(t, 1, 400_000)

  pid, cam, t = sample(train, 1)
  for i, (p, c, tt) in enumerate(zip(pid, cam, t)):
    open(os.path.join(train_dir, names.market_name(int(p), int(c), int(tt), i % 100)), "wb").close()
  centres = rng.standard_normal((ids + 1, dims), dtype=np.float32)
  arrays = {}
  for side, n in (("query", queries), ("gallery", gallery)):
    pid, cam, t = sample(n, 1 if side == "query" else -1)
    if side == "gallery" and distractors:
      pid = np.concatenate([pid, np.zeros(distractors, pid.dtype)])
      cam = np.concatenate([cam, rng.integers(1, 7, distractors)])
      t = np.concatenate([t, rng.integers(1, 400_000, distractors)])
    feats = np.empty((len(pid), dims), np.float32)
    for s in range(0, len(pid), 65536):
      e = min(len(pid), s + 65536)
      feats[s:e] = centres[pid[s:e]] + noise * rng.standard_normal((e - s, dims), dtype=np.float32)
    arrays.update({f"{side}_f": feats, f"{side}_label": pid, f"{side}_cam": cam,
                   f"{side}_frames": t})
  path = os.path.join(out, "features.npz")
  np.savez(path, **arrays)
  return path, train_dir


_JREID = """
import resource, runpy, sys, time, json
sys.argv = ["main.py"] + sys.argv[1:]
start = time.time()
try:
  runpy.run_path("main.py", run_name="__main__")
except SystemExit as e:
  if e.code: raise
print("BENCH " + json.dumps(dict(seconds=time.time() - start,
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def run_jreid(features, train_dir, workdir, *overrides):
  proc = subprocess.run(
      [sys.executable, "-c", _JREID, f"--workdir={workdir}",
       "--config=experiments/eval_features.py", f"--config.features={features}",
       f"--config.train_dir={train_dir}", *overrides], cwd=ROOT, capture_output=True,
      text=True, check=True)
  line = [l for l in proc.stdout.splitlines() if l.startswith("BENCH ")][-1]
  stats = json.loads(line[6:])
  with open(os.path.join(workdir, "results.json")) as f:
    stats["results"] = json.load(f)
  return stats


def run_numpy(features, train_dir):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "numpy_reference.py"),
                         features, train_dir], capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--queries", type=int, default=3368)
  parser.add_argument("--gallery", type=int, default=19732)
  parser.add_argument("--train", type=int, default=12936)
  parser.add_argument("--ids", type=int, default=751)
  parser.add_argument("--dims", type=int, default=2048)
  parser.add_argument("--big_gallery", type=int, default=0,
                      help="also run jreid with this many extra distractors (e.g. 500000)")
  parser.add_argument("--skip_numpy", action="store_true")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    features, train_dir = make_world(tmp, args.queries, args.gallery, args.train, args.ids,
                                     args.dims, 0)
    print(f"Market scale: {args.queries} queries x {args.gallery} gallery, {args.dims}-d, "
          f"{args.train} training names")
    # Re-ranking has its own benchmark (benchmarks/rerank.py); this one compares the
    # visual + ST evaluation that the numpy implementation also does.
    ours = run_jreid(features, train_dir, os.path.join(tmp, "w"), "--config.rerank=False")
    print(f"  jreid:    {ours['seconds']:7.1f} s, peak RSS {ours['peak_rss_mb']:7.0f} MB")
    if not args.skip_numpy:
      base = run_numpy(features, train_dir)
      print(f"  numpy:    {base['seconds']:7.1f} s, peak RSS {base['peak_rss_mb']:7.0f} MB")
      print(f"  ratio jreid/numpy time: {ours['seconds'] / base['seconds']:.3f} "
            f"(target <= 0.5); speed-up x{base['seconds'] / ours['seconds']:.1f}")
      for kind in ("visual", "st"):
        diff = max(abs(ours["results"][kind][k] - base["results"][kind][k])
                   for k in ("rank1", "rank5", "rank10", "mAP"))
        print(f"  {kind}: jreid {json.dumps({k: round(ours['results'][kind][k], 5) for k in ('rank1', 'mAP')})}"
              f", max |difference| to numpy {diff:.2e}")
    if args.big_gallery:
      os.remove(features)
      features, train_dir = make_world(tmp, args.queries, args.gallery, args.train, args.ids,
                                       args.dims, args.big_gallery)
      big = run_jreid(features, train_dir, os.path.join(tmp, "w_big"), "--config.rerank=False")
      print(f"{args.queries} queries x {args.gallery + args.big_gallery} gallery "
            f"({args.big_gallery} distractors): jreid {big['seconds']:.1f} s, "
            f"peak RSS {big['peak_rss_mb']:.0f} MB "
            f"(a dense float32 score matrix alone would be "
            f"{args.queries * (args.gallery + args.big_gallery) * 4 / 2**30:.1f} GiB)")


if __name__ == "__main__":
  main()
