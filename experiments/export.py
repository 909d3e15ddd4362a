"""Export the trained visual model of a workdir: ONNX and a jax.export artifact.

  python main.py --workdir=/tmp/jreid_synthetic --config=experiments/export.py:synthetic

The part after the colon names the experiment the workdir was trained with
(experiments/<name>.py, default "synthetic"); pass the same overrides as for
training. Writes <workdir>/export/model.onnx, model.jax_export and export.json.
Input: uint8 RGB [batch, H, W, 3] at the trained size; output: the normalised
feature as extraction computes it (see docs/deploy.md).
"""

import importlib


def get_config(experiment: str = "synthetic"):
  config = importlib.import_module(f"experiments.{experiment or 'synthetic'}").get_config()
  config.job = "export"
  return config
