"""Shared fixtures: a tiny synthetic world and its prepared TFDS builder.

``pytest.ini`` puts the repository root on sys.path; pytest puts tests/ there too
(for ``numpy_reference``, the numpy oracle).
"""

import pytest

from jreid.data import synthetic

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
