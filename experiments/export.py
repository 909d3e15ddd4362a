"""Export the trained visual model of a workdir: ONNX and a jax.export artifact.

  python main.py --workdir=/tmp/jreid_synthetic --config=experiments/export.py

The workdir is one the main job trained; the model, its input size and its
checkpoint are read from it (stages/train.json and checkpoints/). Writes
<workdir>/export/model.onnx, model.jax_export and export.json. Input: uint8 RGB
[batch, H, W, 3] at the trained size; output: the normalised feature as extraction
computes it (see docs/deploy.md).
"""

from experiments import base


def get_config():
  config = base.st_and_eval_config()
  config.job = "export"
  return config
