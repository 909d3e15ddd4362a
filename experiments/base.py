"""Config fields shared by every experiment: ST model, fusion and evaluation.

The defaults are the reference ("paper") settings of ST_REID_REFERENCE.md.
"""

import ml_collections


def st_and_eval_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.features = ""        # features file (.mat/.npz); empty: run the training pipeline
  config.train_dir = ""       # folder of training image names (features-file path)
  config.grammar = ""         # "market", "market_renamed", "duke", or "" for any
  config.num_parts = 1        # L2-normalise each of this many parts, then the whole vector

  config.st = ml_collections.ConfigDict()
  config.st.bin_width = 100   # frames per bin
  config.st.num_bins = 5000   # H (3000 for DukeMTMC-reID)
  config.st.sigma = 50.0      # Gaussian smoothing, in bins
  config.st.truncate = 3.0    # kernel covers |d| <= truncate * sigma bins
  config.st.eps = 1e-7

  config.fusion = ml_collections.ConfigDict()
  config.fusion.visual_lambda = 1.0
  config.fusion.visual_gamma = 5.0
  config.fusion.st_lambda = 2.0
  config.fusion.st_gamma = 5.0

  config.eval = ml_collections.ConfigDict()
  config.eval.query_chunk = 0             # queries per chunk; 0: from chunk_elements
  config.eval.chunk_elements = 1 << 22    # bound on chunk x gallery (memory)
  config.eval.max_rank = 100              # length of the stored CMC curves

  # k-reciprocal re-ranking (Zhong et al. 2017) of the visual and the joint scores.
  config.rerank = True
  config.rerank_k1 = 20
  config.rerank_k2 = 6
  config.rerank_lambda = 0.3
  return config
