"""Extract features of any images (a tracks table's, or an image folder's) with a trained model.

  python main.py --workdir=/tmp/jreid_extract --config=experiments/extract.py \
    --config.trained_workdir=/tmp/jreid_synthetic \
    --config.tracks.query=/tmp/jreid_synthetic/synthetic_world/tracks.csv

Restores the latest checkpoint of ``trained_workdir`` (a workdir of the main job,
with its training settings from ``stages/train.json``), extracts the features of
the images, sharded over every device, as the training job does (image + flip,
per-part normalisation), and writes ``features.npz`` in the features-file format
with the image paths as ``query_names`` / ``gallery_names``. ``tracks.query`` is a
tracks table (its 'query' rows when it has a split column; the 'gallery' rows are
the gallery unless ``tracks.gallery`` is set) or an image folder (every image).
Search with it: experiments/search.py --config.features=/tmp/jreid_extract/features.npz.
"""

import ml_collections

from experiments import base


def get_config():
  config = base.st_and_eval_config()
  config.job = "extract"
  config.trained_workdir = ""    # workdir of a training run (its checkpoints)
  config.tracks = ml_collections.ConfigDict()
  config.tracks.query = ""       # a tracks table (.csv) or an image folder
  config.tracks.gallery = ""     # the same ("" = tracks.query's 'gallery' rows)
  config.tracks.fps = ""         # frame rates when the table's time holds frames
  config.eval.batch_size = 128   # extraction batch (global, over every device)
  return config
