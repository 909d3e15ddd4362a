"""The embedded default: the whole pipeline on jreid's synthetic Market-1501 world.

  python main.py --workdir=/tmp/jreid_synthetic --config=experiments/synthetic.py

Generates the world (Market layout and names, 6 cameras along a walking route),
prepares it with the market1501 TFDS builder, trains a small ResNet-18 PCB model at
96x48, extracts features, fits the ST model and evaluates (with re-ranking). 6.5 to
13 minutes on this project's 2-core CPUs (they differ), 89% of it the 2,664 training
steps (README, docs/benchmarks.md);
writes results.json, cmc.png, st_distributions.png and ranked_lists.png to the
workdir.
"""

from experiments import base


def get_config():
  config = base.training_config()
  config.data.dataset = "synthetic"
  config.data.synthetic = base.synthetic_world_config(num_train_ids=300, num_test_ids=300)
  config.data.image_size = (96, 48)
  config.train.batch_size = 32
  config.eval.batch_size = 128
  config.train.epochs = 24
  config.model.depth = 18
  config.model.width = 32
  config.optimizer.lr = 0.01
  config.optimizer.decay_epochs = (18,)
  config.optimizer.warmup_epochs = 1.0
  config.log_every_steps = 50
  return config
