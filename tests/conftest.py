import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "benchmarks")):
  if p not in sys.path:
    sys.path.insert(0, p)

import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order

from jreid.data import synthetic  # pylint: disable=g-import-not-at-top

TINY_WORLD = synthetic.WorldParams(num_train_ids=12, num_test_ids=10, num_cameras=4,
                                   image_height=64, image_width=32, num_junk=4,
                                   num_distractors=6, group_size=3, seed=7)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
  """A tiny synthetic world on disk (with its zip): (folder, manifest)."""
  out = str(tmp_path_factory.mktemp("world"))
  manifest = synthetic.generate(out, TINY_WORLD, make_zip=True)
  return out, manifest


@pytest.fixture(scope="session")
def builder(world, tmp_path_factory):
  """The market1501 TFDS builder prepared from the tiny world."""
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top
  return market1501.prepare(str(tmp_path_factory.mktemp("tfds")), world[0])
