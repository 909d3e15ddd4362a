"""A tiny end-to-end run for tests (seconds on a CPU).

  python main.py --workdir=/tmp/jreid_tiny --config=experiments/tiny.py
"""

from experiments import base


def get_config():
  config = base.training_config()
  config.data.dataset = "synthetic"
  config.data.synthetic = base.synthetic_world_config(
      num_train_ids=8, num_test_ids=8, num_cameras=4, image_height=32, image_width=16,
      num_junk=3, num_distractors=4, group_size=2)
  config.data.image_size = (32, 16)
  config.train.batch_size = 8
  config.eval.batch_size = 8
  config.train.epochs = 2
  config.model.depth = 0
  config.model.width = 4
  config.model.stage_blocks = (1, 1, 1, 1)
  config.model.parts = 2
  config.model.bottleneck = 8
  config.optimizer.decay_epochs = (1,)
  config.log_every_steps = 2
  config.checkpoint.every_steps = 3
  config.checkpoint.keep = 2
  config.eval.ranked_list_queries = 3
  config.st.num_bins = 3000
  return config
