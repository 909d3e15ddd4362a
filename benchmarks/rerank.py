"""Benchmark: k-reciprocal re-ranking, jreid (chunked, sparse) vs the dense approach.

  python benchmarks/rerank.py [--queries=3368 --gallery=19732 --dims=2048]
                              [--dense_queries=1000 --dense_gallery=7000]

1. Both on a reduced problem (dense: the published code path, an [N, N] matrix
   and Python loops), each in its own process, with time, peak RSS and its growth;
   checks that both give the same ranking metrics.
2. jreid alone at Market-1501 scale (the dense one needs > 15 GB and ~30 min),
   in a child process, with its peak RSS.
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
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def world(queries, gallery, dims, ids, seed=0, noise=4.0):
  from jreid import evaluate, scoring  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((ids + 1, dims), dtype=np.float32)
  def side(n, low):
    pid = rng.integers(low, ids + 1, n)
    f = centres[np.maximum(pid, 0)] + noise * rng.standard_normal((n, dims), dtype=np.float32)
    return evaluate.ImageSet(scoring.l2_normalise_features(f), pid, rng.integers(1, 7, n),
                             rng.integers(1, 400_000, n))
  return side(queries, 1), side(gallery, -1)


def run_jreid(queries, gallery, dims, ids):
  from jreid import evaluate, metrics, rerank  # pylint: disable=g-import-not-at-top
  q, g = world(queries, gallery, dims, ids)
  good, junk = evaluate.match_lists(q.person_ids, q.cameras, g.person_ids, g.cameras)
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  start = time.time()
  ranks = rerank.rerank_ranks(q, g, None, good, junk)
  seconds = time.time() - start
  m = metrics.retrieval_metrics(ranks, 10).summary()
  return dict(seconds=seconds, mAP=m["mAP"], rank1=m["rank1"], rss_before_mb=rss0,
              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_dense(queries, gallery, dims, ids):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy_reference  # pylint: disable=g-import-not-at-top
  from jreid import evaluate, metrics  # pylint: disable=g-import-not-at-top
  q, g = world(queries, gallery, dims, ids)
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  start = time.time()
  f = np.concatenate([q.features, g.features])
  dist = (2 - 2 * (f @ f.T)).astype(np.float64)
  final = numpy_reference.dense_rerank(dist, len(q))
  seconds = time.time() - start
  good, junk = evaluate.match_lists(q.person_ids, q.cameras, g.person_ids, g.cameras)
  ranks = np.asarray(metrics.good_item_ranks(jnp.asarray(-final, jnp.float32), jnp.asarray(good),
                                             jnp.asarray(junk), jnp.asarray(g.person_ids == -1)))
  m = metrics.retrieval_metrics(ranks, 10).summary()
  return dict(seconds=seconds, mAP=m["mAP"], rank1=m["rank1"], rss_before_mb=rss0,
              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def child(kind, *args):
  proc = subprocess.run([sys.executable, __file__, "--child", kind] + [str(a) for a in args],
                        capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.splitlines()[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--queries", type=int, default=3368)
  parser.add_argument("--gallery", type=int, default=19732)
  parser.add_argument("--dims", type=int, default=2048)
  parser.add_argument("--ids", type=int, default=751)
  parser.add_argument("--dense_queries", type=int, default=1000)
  parser.add_argument("--dense_gallery", type=int, default=7000)
  parser.add_argument("--child", nargs=5)
  args = parser.parse_args()
  if args.child:
    kind, *sizes = args.child
    fn = run_jreid if kind == "jreid" else run_dense
    print(json.dumps(fn(*(int(s) for s in sizes))))
    return
  small = (args.dense_queries, args.dense_gallery, args.dims, args.ids)
  dense = child("dense", *small)
  ours = child("jreid", *small)
  print(f"re-ranking {small[0]} x {small[1]} ({small[0] + small[1]} items), {args.dims}-d:")
  for name, r in (("dense", dense), ("jreid", ours)):
    print(f"  {name}: {r['seconds']:7.1f} s, peak RSS {r['peak_rss_mb']:6.0f} MB "
          f"(+{r['peak_rss_mb'] - r['rss_before_mb']:.0f} MB), mAP {r['mAP']:.5f}")
  print(f"  ratio jreid/dense time: {ours['seconds'] / dense['seconds']:.3f}; "
        f"|mAP difference| {abs(ours['mAP'] - dense['mAP']):.1e}")
  big = child("jreid", args.queries, args.gallery, args.dims, args.ids)
  print(f"re-ranking {args.queries} x {args.gallery} (Market-1501 scale), {args.dims}-d: "
        f"jreid {big['seconds']:.1f} s, peak RSS {big['peak_rss_mb']:.0f} MB (target: a couple "
        f"of minutes, < 4 GB); the dense [N, N] float64 matrix alone would be "
        f"{(args.queries + args.gallery) ** 2 * 8 / 2**30:.1f} GiB")


if __name__ == "__main__":
  main()
