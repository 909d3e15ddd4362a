"""Benchmark: images/s of the training input pipeline (decode, resize, flip, erase).

  python benchmarks/input_pipeline.py [--image_size=384,192] [--batch=32] [--steps=60]

Generates a synthetic Market-format world at the real 128x64 box size, prepares it
with the market1501 TFDS builder, then times TrainData.batches() alone (no model),
after a warm-up. Prints images/s in total and per CPU core; compare with the
train-step benchmark's images/s per accelerator to see whether input is a bottleneck.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jreid.data import market1501  # pylint: disable=g-import-not-at-top
from jreid.data import pipeline  # pylint: disable=g-import-not-at-top
from jreid.data import synthetic  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--image_size", default="384,192")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--ids", type=int, default=120)
  args = parser.parse_args()
  size = tuple(int(x) for x in args.image_size.split(","))
  with tempfile.TemporaryDirectory() as tmp:
    synthetic.generate(tmp, synthetic.WorldParams(num_train_ids=args.ids, num_test_ids=10,
                                                  num_junk=2, num_distractors=2))
    builder = market1501.prepare(os.path.join(tmp, "tfds"), tmp)
    data = pipeline.TrainData(builder, args.batch, size, seed=0)
    it = data.batches(0)
    for _ in range(5):
      next(it)
    start = time.time()
    for _ in range(args.steps):
      next(it)
    seconds = time.time() - start
  rate = args.steps * args.batch / seconds
  cores = os.cpu_count() or 1
  print(f"train input pipeline at {size[0]}x{size[1]}, batch {args.batch}: {rate:.0f} images/s "
        f"on {cores} cores ({rate / cores:.0f} images/s per core)")


if __name__ == "__main__":
  main()
