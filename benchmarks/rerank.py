"""Benchmark: k-reciprocal re-ranking, jreid (device kernels, bounded memory) vs the dense approach.

  python benchmarks/rerank.py [--queries=3368 --gallery=19732 --dims=2048]
                              [--dense_queries=1000 --dense_gallery=7000]

1. Both on a reduced problem (dense: the published code path, an [N, N] matrix
   and Python loops, tests/numpy_reference.py), visual re-ranking, each in its own
   process, with time, peak RSS and its growth; checks both give the same metrics.
2. jreid alone at Market-1501 scale (the dense one needs > 15 GB and ~30 min):
   visual re-ranking, then both kinds (visual and ST, sharing one neighbour pass)
   with a random ST table, each in a child process, with its peak RSS.
jreid's times include compilation; its log lines (compilation apart) are printed.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # numpy_reference, the oracle of the tests


def world(queries, gallery, dims, ids, seed=0, noise=4.0):
  from jreid import records, scoring  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((ids + 1, dims), dtype=np.float32)
  def side(n, low):
    pid = rng.integers(low, ids + 1, n)
    f = centres[np.maximum(pid, 0)] + noise * rng.standard_normal((n, dims), dtype=np.float32)
    return records.Records(pid, rng.integers(0, 6, n), rng.integers(1, 400_000, n),
                           scoring.l2_normalise_features(f))
  return side(queries, 1), side(gallery, -1)


def run_jreid(queries, gallery, dims, ids, kinds=1):
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  from jreid import evaluate, scoring  # pylint: disable=g-import-not-at-top
  q, g = world(queries, gallery, dims, ids)
  rng = np.random.default_rng(1)
  table = rng.uniform(size=(6, 6, 5000)).astype(np.float32)
  table /= table.sum(axis=2, keepdims=True)
  methods = ["visual_rerank", "st_rerank"][:kinds]
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  start = time.time()
  found = evaluate.evaluate(q, g, table, bin_width=100, fusion=scoring.FusionParams(),
                            methods=methods, max_rank=10)
  seconds = time.time() - start
  m = found["visual_rerank"].summary()
  return dict(seconds=seconds, mAP=m["mAP"], rank1=m["rank1"], rss_before_mb=rss0,
              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_dense(queries, gallery, dims, ids, kinds=1):
  del kinds
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy_reference  # pylint: disable=g-import-not-at-top
  from jreid import metrics, protocol  # pylint: disable=g-import-not-at-top
  q, g = world(queries, gallery, dims, ids)
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  start = time.time()
  f = np.concatenate([q.features, g.features])
  dist = (2 - 2 * (f @ f.T)).astype(np.float64)
  final = numpy_reference.dense_rerank(dist, len(q))
  seconds = time.time() - start
  good, junk = protocol.match_lists(q.person_ids, q.cameras, g.person_ids, g.cameras)
  ranks = np.asarray(metrics.good_item_ranks(jnp.asarray(-final, jnp.float32), jnp.asarray(good),
                                             jnp.asarray(junk), jnp.asarray(g.person_ids == -1)))
  m = metrics.retrieval_metrics(ranks, 10).summary()
  return dict(seconds=seconds, mAP=m["mAP"], rank1=m["rank1"], rss_before_mb=rss0,
              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def child(kind, *args):
  proc = subprocess.run([sys.executable, __file__, "--child", kind] + [str(a) for a in args],
                        capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(proc.stderr[-5000:])
  for line in proc.stderr.splitlines():
    if "evaluate: " in line and (" in " in line or "compiled" in line):
      print("    log:", line.split("] ")[-1])
  return json.loads(proc.stdout.splitlines()[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--queries", type=int, default=3368)
  parser.add_argument("--gallery", type=int, default=19732)
  parser.add_argument("--dims", type=int, default=2048)
  parser.add_argument("--ids", type=int, default=751)
  parser.add_argument("--dense_queries", type=int, default=1000)
  parser.add_argument("--dense_gallery", type=int, default=7000)
  parser.add_argument("--skip_market", action="store_true")
  parser.add_argument("--child", nargs=6)
  args = parser.parse_args()
  if args.child:
    kind, *sizes = args.child
    fn = run_jreid if kind == "jreid" else run_dense
    print(json.dumps(fn(*(int(s) for s in sizes))))
    return
  small = (args.dense_queries, args.dense_gallery, args.dims, args.ids, 1)
  dense = child("dense", *small)
  ours = child("jreid", *small)
  print(f"re-ranking {small[0]} x {small[1]} ({small[0] + small[1]} items), {args.dims}-d:")
  for name, r in (("dense", dense), ("jreid", ours)):
    print(f"  {name}: {r['seconds']:7.1f} s, peak RSS {r['peak_rss_mb']:6.0f} MB "
          f"(+{r['peak_rss_mb'] - r['rss_before_mb']:.0f} MB), mAP {r['mAP']:.5f}")
  print(f"  ratio jreid/dense time: {ours['seconds'] / dense['seconds']:.3f}; "
        f"|mAP difference| {abs(ours['mAP'] - dense['mAP']):.1e}")
  if args.skip_market:
    return
  dense_gib = (args.queries + args.gallery) ** 2 * 8 / 2**30
  for kinds in (1, 2):
    big = child("jreid", args.queries, args.gallery, args.dims, args.ids, kinds)
    print(f"re-ranking {args.queries} x {args.gallery}, {args.dims}-d, "
          f"{('visual', 'visual + ST')[kinds - 1]}: jreid {big['seconds']:.1f} s, peak RSS "
          f"{big['peak_rss_mb']:.0f} MB (the dense [N, N] float64 matrix alone would be "
          f"{dense_gib:.1f} GiB)")


if __name__ == "__main__":
  main()
