"""Probe: does a trained model's retrieval depend on its pooling, or on its training?

  python benchmarks/pooling_probe.py --workdir=/tmp/pcb --workdir=/tmp/strong [--data_dir=...]
      [--manual_dir=...]

For each trained workdir of the main job (its latest checkpoint and the data it was
trained on, ``stages/train.json``), pools the backbone's feature map of every query
and gallery image and of its flip, adds the two (as extraction does), and scores the
same backbone with several poolings at test time: the head's own retrieval feature (the
baseline, = results.json's ``visual`` row), global average, 2, 3 and 6 horizontal
stripes (each L2-normalised, as PCB), global max and GeM (p = 3). Prints visual rank-1
and mAP of each with its difference from the baseline's (points), and writes them to
``<workdir>/pooling_probe.json``.

If a globally pooled PCB backbone retrieves about as well as its parts while a
globally trained backbone stays below under every pooling, the gap between them is
in what training taught the backbone, not in the pooling (docs/strong_baseline.md).
"""

import functools
import json
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jreid import augment  # pylint: disable=g-import-not-at-top
from jreid import evaluate  # pylint: disable=g-import-not-at-top
from jreid import jobs  # pylint: disable=g-import-not-at-top
from jreid import scoring  # pylint: disable=g-import-not-at-top
from jreid import sharding  # pylint: disable=g-import-not-at-top
from jreid import stages  # pylint: disable=g-import-not-at-top
from jreid.models import heads  # pylint: disable=g-import-not-at-top

flags.DEFINE_multi_string("workdir", None, "trained workdirs of the main job", required=True)
flags.DEFINE_string("data_dir", "", "TFDS data dir of the training run (its default if empty)")
flags.DEFINE_string("manual_dir", "", "the run's manual_dir (its default if empty)")
FLAGS = flags.FLAGS


# name -> (pooling of a feature map [B, h, w, C] -> [B, D], parts to L2-normalise).
POOLINGS = {
    "global average": (lambda m: m.mean(axis=(1, 2)), 1),
    **{f"{p} stripes": (lambda m, p=p: heads.part_pool(m, p).reshape(m.shape[0], -1), p)
       for p in (2, 3, 6)},
    "global max": (lambda m: m.max(axis=(1, 2)), 1),
    "GeM p=3": (lambda m: jnp.mean(jnp.maximum(m, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3), 1),
}
BASELINE = "head retrieval (baseline)"


def pooled_features(workdir: str, mesh) -> tuple[dict, int]:
  """split -> (records, {pooling name: [N, D]}) and the head's parts.

  Each pooling is taken of an image's feature map and of its flip's, and the two are
  added, as extraction adds the image's and the flip's features (not normalised yet).
  """
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from jreid.data import pipeline  # pylint: disable=g-import-not-at-top
  config, graphdef, state, _ = jobs.restore_trained(workdir, mesh)  # a fresh ConfigDict
  config.data_dir, config.manual_dir = FLAGS.data_dir, FLAGS.manual_dir
  builder, _ = stages.prepare_data(config, workdir)
  size = tuple(config.data.image_size)

  @functools.partial(jax.jit, compiler_options=stages.compiler_options(config) or None)
  def step(state, images):
    model = nnx.merge(graphdef, state)["model"]
    model.eval()
    x = augment.to_model_input(images, size, model.config.backbone.dtype)
    maps = [model.backbone(v).astype(jnp.float32) for v in (x, x[:, :, ::-1, :])]
    out = {BASELINE: sum(model.head.retrieval(model.head.pool(m)) for m in maps)}
    out.update({name: sum(pool(m) for m in maps) for name, (pool, _) in POOLINGS.items()})
    return {k: v.reshape(v.shape[0], -1) for k, v in out.items()}

  out = {}
  for split in ("query", "gallery"):
    batches, _ = pipeline.eval_batches(builder, split, 128, stages.transfer_size(config))
    parts = {}
    for batch in batches:
      got = jax.device_get(step(state, batch["image"]))
      keep = batch["mask"].astype(bool)
      for k, v in got.items():
        parts.setdefault(k, []).append(v[keep])
    out[split] = (market1501.split_records(builder, split),
                  {k: np.concatenate(v) for k, v in parts.items()})
  return out, int(config.model.parts)


def main(argv):
  del argv
  mesh = sharding.make_mesh()
  for workdir in FLAGS.workdir:
    sets, head_parts = pooled_features(workdir, mesh)
    (query, q_pooled), (gallery, g_pooled) = sets["query"], sets["gallery"]
    parts = {BASELINE: head_parts, **{name: p for name, (_, p) in POOLINGS.items()}}
    results = {}
    print(f"\n{workdir}\n{'pooling at test time':28s} rank-1     mAP   (against the head's own)")
    for name in parts:
      m = evaluate.evaluate(
          query.with_features(scoring.l2_normalise_features(q_pooled[name], parts[name])),
          gallery.with_features(scoring.l2_normalise_features(g_pooled[name], parts[name])),
          None, bin_width=1, methods=("visual",), mesh=mesh)["visual"]
      results[name] = dict(rank1=float(m.cmc[0]), mAP=float(m.mAP))
      base = results[BASELINE]
      print(f"{name:28s} {100 * m.cmc[0]:6.1f}  {100 * m.mAP:6.1f}   "
            f"({100 * (m.cmc[0] - base['rank1']):+5.1f}, {100 * (m.mAP - base['mAP']):+5.1f})",
            flush=True)
    with open(os.path.join(workdir, "pooling_probe.json"), "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
