"""Evaluate an existing features file with the ST-ReID spatial-temporal prior.

  python main.py --workdir=/tmp/jreid_eval --config=experiments/eval_features.py \
    --config.features=pytorch_result.mat \
    --config.train_dir=Market-1501-v15.09.15/bounding_box_train

Writes results.json (visual and st metrics), cmc.json, cmc.png, st_model.npz and
st_distributions.png to the workdir. For DukeMTMC-reID add --config.st.num_bins=3000.
"""

from experiments import base


def get_config():
  return base.st_and_eval_config()
