"""A straightforward numpy implementation of ST-ReID fitting and evaluation.

Written from ``docs/reference.md`` sections 2-4 the way the reference code
works: Python loops over identities and camera pairs, a dense smoothing matrix,
and one argsort per query. It is the baseline the benchmarks measure jreid
against, and the independent implementation the tests compare with.
"""

import math

import numpy as np


def fit_st(ids, cams0, times, num_cameras, bin_width=100, num_bins=5000, sigma=50.0,
           eps=1e-7):
  """Reference ST table [C, C, H] (float64), loops as in the reference."""
  uniq = {pid: i for i, pid in enumerate(sorted(set(int(x) for x in ids)))}
  total = np.zeros((len(uniq), num_cameras))
  count = np.zeros((len(uniq), num_cameras))
  for pid, cam, t in zip(ids, cams0, times):
    total[uniq[int(pid)]][cam] += t
    count[uniq[int(pid)]][cam] += 1
  mean = total / (count + eps)
  hist = np.zeros((num_cameras, num_cameras, num_bins))
  for i in range(len(uniq)):
    for j in range(num_cameras - 1):
      for k in range(j + 1, num_cameras):
        if count[i][j] == 0 or count[i][k] == 0:
          continue
        if mean[i][j] > mean[i][k]:
          b = int((mean[i][j] - mean[i][k]) / bin_width)
          if b < num_bins:
            hist[j][k][b] += 1
        else:
          b = int((mean[i][k] - mean[i][j]) / bin_width)
          if b < num_bins:
            hist[k][j][b] += 1
  hist = hist / (hist.sum(axis=2, keepdims=True) + eps)
  # Dense smoothing matrix, |i - j| <= 3 sigma, as the reference's gauss_smooth2.
  half = int(math.floor(3 * sigma))
  idx = np.arange(num_bins)
  dist = np.abs(idx[:, None] - idx[None, :])
  gauss = 1.0 / (sigma * math.sqrt(2 * math.pi)) * np.exp(-(dist.astype(np.float64) ** 2)
                                                          / (2 * sigma ** 2))
  matrix = np.where(dist <= half, gauss, 0.0)
  smoothed = np.einsum("ij,abj->abi", matrix, hist)
  return smoothed / (smoothed.sum(axis=2, keepdims=True) + eps)


def normalise(features, num_parts=1):
  f = np.asarray(features, np.float32).reshape(len(features), num_parts, -1)
  f = f / np.linalg.norm(f, axis=2, keepdims=True)
  f = f.reshape(len(features), -1)
  return f / np.linalg.norm(f, axis=1, keepdims=True)


def st_row(table, qc, qt, gc, gt, bin_width=100):
  """ST probabilities of one query (0-based cameras) against the gallery."""
  H = table.shape[2]
  out = np.zeros(len(gc))
  later = qt > gt
  diff = np.where(later, qt - gt, gt - qt)
  b = (diff // bin_width).astype(np.int64)
  a = np.where(later, qc, gc)
  c = np.where(later, gc, qc)
  ok = b < H
  out[ok] = table[a[ok], c[ok], b[ok]]
  return out


def query_ap_cmc(score, ql, qc, gl, gc):
  """(trapezoid AP, plain AP, rank of first good or -1) of one query, reference-style."""
  index = np.argsort(-score, kind="stable")
  query_index = np.argwhere(gl == ql).flatten()
  camera_index = np.argwhere(gc == qc).flatten()
  good = np.setdiff1d(query_index, camera_index, assume_unique=True)
  good = good[gl[good] != -1]
  junk = np.append(np.intersect1d(query_index, camera_index), np.argwhere(gl == -1).flatten())
  if good.size == 0:
    return 0.0, 0.0, -1
  index = index[np.isin(index, junk, invert=True)]
  rows = np.argwhere(np.isin(index, good)).flatten()
  ap = plain = 0.0
  n = len(good)
  for i in range(n):
    precision = (i + 1) / (rows[i] + 1)
    old = i / rows[i] if rows[i] != 0 else 1.0
    ap += (1.0 / n) * (old + precision) / 2
    plain += precision / n
  return ap, plain, int(rows[0])


def evaluate(qf, ql, qc, qt, gf, gl, gc, gt, table=None, bin_width=100, max_rank=100):
  """rank1/5/10 and mAP for the visual (table None) or joint score; cameras 1-based."""
  aps, plains, firsts = [], [], []
  for i in range(len(ql)):
    score = gf @ qf[i]
    if table is not None:
      p = st_row(table, qc[i] - 1, qt[i], gc - 1, gt, bin_width)
      score = 1 / (1 + np.exp(-5 * score)) * 1 / (1 + 2 * np.exp(-5 * p))
    ap, plain, first = query_ap_cmc(score, ql[i], qc[i], gl, gc)
    if first >= 0:
      aps.append(ap), plains.append(plain), firsts.append(first)
  firsts = np.asarray(firsts)
  cmc = (firsts[:, None] < np.arange(1, max_rank + 1)[None, :]).mean(axis=0)
  return dict(rank1=cmc[0], rank5=cmc[4], rank10=cmc[9], mAP=float(np.mean(aps)),
              mAP_plain=float(np.mean(plains)), cmc=cmc)


def dense_rerank(original_dist, query_num, k1=20, k2=6, lambda_value=0.3):
  """The published re-ranking code path, dense: [N, N] distances -> final [Q, G]."""
  all_num = original_dist.shape[0]
  original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
  V = np.zeros_like(original_dist).astype(np.float32)
  initial_rank = np.argsort(original_dist, axis=1, kind="stable").astype(np.int32)
  half = int(np.around(k1 / 2))
  for i in range(all_num):
    forward = initial_rank[i, :k1 + 1]
    backward = initial_rank[forward, :k1 + 1]
    k_reciprocal = forward[np.where(backward == i)[0]]
    expansion = k_reciprocal
    for candidate in k_reciprocal:
      c_forward = initial_rank[candidate, :half + 1]
      c_backward = initial_rank[c_forward, :half + 1]
      c_reciprocal = c_forward[np.where(c_backward == candidate)[0]]
      if len(np.intersect1d(c_reciprocal, k_reciprocal)) > 2 / 3 * len(c_reciprocal):
        expansion = np.append(expansion, c_reciprocal)
    expansion = np.unique(expansion)
    weight = np.exp(-original_dist[i, expansion])
    V[i, expansion] = weight / np.sum(weight)
  original_dist = original_dist[:query_num]
  if k2 != 1:
    V = np.stack([np.mean(V[initial_rank[i, :k2], :], axis=0) for i in range(all_num)])
  inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
  jaccard = np.zeros_like(original_dist, dtype=np.float32)
  for i in range(query_num):
    temp_min = np.zeros(all_num, dtype=np.float32)
    non_zero = np.where(V[i, :] != 0)[0]
    for k in non_zero:
      temp_min[inv_index[k]] += np.minimum(V[i, k], V[inv_index[k], k])
    jaccard[i] = 1 - temp_min / (2 - temp_min)
  final = jaccard * (1 - lambda_value) + original_dist * lambda_value
  return final[:query_num, query_num:]


def main(argv=None):
  """Whole evaluate-from-features process: python numpy_reference.py FEATURES TRAIN_DIR."""
  import argparse
  import json
  import os
  import resource
  import sys
  import time
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from jreid import names  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser()
  parser.add_argument("features")
  parser.add_argument("train_dir")
  parser.add_argument("--num_bins", type=int, default=5000)
  args = parser.parse_args(argv)
  start = time.time()
  f = np.load(args.features)
  train = names.parse_names(n for n in sorted(os.listdir(args.train_dir)) if n.endswith(".jpg"))
  num_cameras = int(max(train.cameras.max() + 1, f["query_cam"].max(), f["gallery_cam"].max()))
  table = fit_st(train.person_ids, train.cameras, train.times, num_cameras,
                 num_bins=args.num_bins)
  qf, gf = normalise(f["query_f"]), normalise(f["gallery_f"])
  q = [f[f"query_{k}"].reshape(-1) for k in ("label", "cam", "frames")]
  g = [f[f"gallery_{k}"].reshape(-1) for k in ("label", "cam", "frames")]
  results = {}
  for kind, tab in (("visual", None), ("st", table)):
    r = evaluate(qf, *q, gf, *g, table=tab)
    results[kind] = {k: float(r[k]) for k in ("rank1", "rank5", "rank10", "mAP")}
  print(json.dumps(dict(results=results, seconds=time.time() - start,
                        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


if __name__ == "__main__":
  main()
