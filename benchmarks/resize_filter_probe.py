"""Benchmark: a trained model's test-time features through jreid's resize and through PIL's.

  python benchmarks/resize_filter_probe.py --trained_workdir=/tmp/runs/parity_pcb/jreid_seed0 \
    --market_root=/tmp/runs/parity_pcb/market/Market-1501-v15.09.15

jreid resizes on the device with TensorFlow's bicubic kernel, without
antialiasing (``augment.resize_bicubic``); the reference codes resize with PIL
on the host (torchvision's ``Resize``: PIL's bicubic, whose support widens by the
downscale factor, or bilinear for the strong baseline). This extracts the query
and gallery features of one trained model twice, from the same decoded boxes: (a)
jreid's way (uint8 at the native 128x64, resized in the extraction step), and (b)
resized by PIL on the host to the model's input size and rounded to uint8 (what
the reference feeds its model), then the extraction step with no resize. Both go
through jreid's features-file job (visual and st); the table shows the
difference that the test-time resize alone makes. Nothing is written inside the
repository: the features go to ``--workdir``.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference_parity as rp  # pylint: disable=g-import-not-at-top,wrong-import-position

FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def load(folder: str):
  from jreid import names  # pylint: disable=g-import-not-at-top
  listing = names.list_image_folder(folder)
  images = np.stack([np.asarray(Image.open(os.path.join(folder, n)).convert("RGB"))
                     for n in listing.records.names])
  return listing.records, images


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--trained_workdir", required=True)
  p.add_argument("--market_root", required=True, help="the extracted Market-1501-v15.09.15/")
  p.add_argument("--workdir", default="/tmp/jreid_resize_probe")
  p.add_argument("--filter", default="bicubic", choices=sorted(FILTERS))
  p.add_argument("--batch", type=int, default=128)
  args = p.parse_args()
  rp.refuse_inside_repository(args.workdir)
  os.makedirs(args.workdir, exist_ok=True)
  from jreid import features as features_lib  # pylint: disable=g-import-not-at-top
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  from jreid import scoring  # pylint: disable=g-import-not-at-top
  from jreid import sharding  # pylint: disable=g-import-not-at-top
  from jreid import stages  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  trained, graphdef, state, step = jobs.restore_trained(args.trained_workdir, mesh)
  size = tuple(trained.data.image_size)
  extract = features_lib.make_extract_step(
      graphdef, mesh, size, stages.compiler_options(trained))
  rows = {}
  for side, folder in (("query", "query"), ("gallery", "bounding_box_test")):
    records, images = load(os.path.join(args.market_root, folder))
    pil = np.stack([np.asarray(Image.fromarray(x).resize((size[1], size[0]),
                                                         FILTERS[args.filter]))
                    for x in images])
    for way, batch in (("jreid", images), ("pil", pil)):
      out = []
      for i in range(0, len(batch), args.batch):
        chunk = batch[i:i + args.batch]
        padded = np.concatenate([chunk, np.zeros((args.batch - len(chunk),) + chunk.shape[1:],
                                                 np.uint8)])
        images_dev = sharding.to_global({"image": padded}, sharding.data_sharding(mesh))["image"]
        out.append(sharding.gather(extract(state, images_dev))[:len(chunk)])
      f = np.concatenate(out).reshape(len(batch), -1)
      rows[(way, side)] = (records, scoring.l2_normalise_features(f, trained.model.parts))
      print(f"{side}: {way} features of {len(batch)} images", flush=True)
  results = {}
  for way in ("jreid", "pil"):
    path = os.path.join(args.workdir, f"features_{way}.npz")
    out = {}
    for side in ("query", "gallery"):
      records, f = rows[(way, side)]
      out.update({f"{side}_f": f, f"{side}_label": records.person_ids,
                  f"{side}_cam": records.cameras + 1, f"{side}_frames": records.times})
    np.savez(path, **out)
    results[way] = rp.evaluate(path, os.path.join(args.market_root, "bounding_box_train"),
                               os.path.join(args.workdir, f"eval_{way}"),
                               num_parts=trained.model.parts)
  print(f"\n{args.trained_workdir} (step {step}), input {size[0]}x{size[1]}, test-time resize "
        f"only (percent)\n")
  print(f"{'resize':>28}  {'visual rank-1':>13}  {'visual mAP':>10}  {'st rank-1':>9}  "
        f"{'st mAP':>6}")
  for way, label in (("jreid", "jreid (TF bicubic, device)"),
                     ("pil", f"PIL {args.filter} (host, uint8)")):
    r = results[way]
    print(f"{label:>28}  {100 * r['visual']['rank1']:13.2f}  {100 * r['visual']['mAP']:10.2f}  "
          f"{100 * r['st']['rank1']:9.2f}  {100 * r['st']['mAP']:6.2f}")
  d = {k: 100 * (results["pil"][m][k2] - results["jreid"][m][k2])
       for k, (m, k2) in {"v1": ("visual", "rank1"), "vm": ("visual", "mAP"),
                          "s1": ("st", "rank1"), "sm": ("st", "mAP")}.items()}
  print(f"{'PIL - jreid':>28}  {d['v1']:+13.2f}  {d['vm']:+10.2f}  {d['s1']:+9.2f}  "
        f"{d['sm']:+6.2f}")


if __name__ == "__main__":
  main()
