"""Search your own camera network: tracks tables in, ranked lists out (docs/cameras.md).

Fit the ST model from labelled training tracks and search query vs gallery with
features from a file (the synthetic world's table has train/query/gallery splits):

  python main.py --workdir=/tmp/jreid_search --config=experiments/search.py \
    --config.tracks.train=WORLD/tracks.csv --config.tracks.query=WORLD/tracks.csv \
    --config.features=features.npz

or with features extracted from the images by a trained workdir (its checkpoint):

  python main.py --workdir=/tmp/jreid_search --config=experiments/search.py \
    --config.tracks.train=WORLD/tracks.csv --config.tracks.query=WORLD/tracks.csv \
    --config.trained_workdir=/tmp/jreid_synthetic

or with a saved model: --config.st_model=/tmp/jreid_search/st_model.npz instead of
tracks.train. Writes rank_lists.json (top-k of every query with visual score, ST
probability and joint score), ranked_lists.png, st_model.npz and
st_distributions.png; with labelled query and gallery also results.json.
"""

import ml_collections

from experiments import base


def get_config():
  config = base.st_and_eval_config()
  config.job = "search"
  config.tracks = ml_collections.ConfigDict()
  config.tracks.train = ""       # labelled table to fit the ST model (its 'train' rows if split)
  config.tracks.query = ""       # table of the queries (its 'query' rows if it has a split column)
  config.tracks.gallery = ""     # table of the gallery ("" = tracks.query's 'gallery' rows)
  config.tracks.fps = ""         # "": times are seconds/ISO; "25" or "cam1=25,cam2=30": frames
  config.st_model = ""           # a saved st_model.npz instead of tracks.train
  config.trained_workdir = ""    # extract features of the tables' images with this model
  config.st.bin_seconds = 4.0    # tables: seconds per ST bin (Market: 100 frames at 25 fps)
  config.eval.batch_size = 128   # extraction batch, with trained_workdir
  # config.eval.top_k: results per query in rank_lists.json; config.eval.ranked_list_queries:
  # queries drawn in ranked_lists.png; with labels, config.eval.methods are evaluated too.
  return config
