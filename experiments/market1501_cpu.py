"""The reference recipe sized for a 2-core CPU: real Market-1501, from scratch, within an hour.

  python main.py --workdir=/tmp/jreid_market_cpu --config=experiments/market1501_cpu.py \
    --config.manual_dir=/path/holding/Market-1501-v15.09.15.zip

Trains a PCB model from scratch on the real training split (12,936 images, 751
identities), extracts the query and gallery features, fits the ST model from the
training names and evaluates all four methods (visual, st, visual_rerank,
st_rerank). Budget: at most 60 minutes of wall time on a 2-core CPU, preparation
of the zip included.

Why these choices (train-step times measured on the 2-core CPU with
``benchmarks/train_step.py --batch=32``, PCB head with 751 classes):

| backbone | input | ms/step | images/s | one epoch |
|---|---|---|---|---|
| ResNet-18, width 64 | 128x64 | 827 | 38.7 | 334 s |
| ResNet-18, width 64 | 96x48 | 554 | 57.7 | 224 s |
| ResNet-50, width 32 | 128x64 | 1,026 | 31.2 | 415 s |
| ResNet-18, width 32 | 128x64 | 364 | 88.0 | 147 s |
| ResNet-18, width 32 | 96x48 | 185 | 172.7 | 75 s |

- From scratch, the number of passes over the data matters more than the size
  of the network: the full-width ResNet-18 at the native 128x64 gets about 8
  epochs in the budget, the half-width one at 96x48 about 28 with the
  input loop's own costs, preparation, extraction and re-ranking left over. The
  half-width ResNet-18 is also the network of the synthetic main job, so
  the two worlds share one network.
- 96x48 keeps 6 rows of the last-stride-1 feature map, one per PCB part.
- The optimiser is the reference's (SGD with Nesterov momentum, backbone 0.01,
  heads 10x, weight decay 5e-4), with its one x0.1 decay at two thirds of the
  schedule moved to three quarters (epoch 21 of 28), and one epoch of linear
  warm-up, as the synthetic main job has (the reference, starting from ImageNet
  weights, has none).
- Flip and random erasing (p 0.5), as the reference's published run.

A user with a GPU runs ``experiments/market1501.py`` (ResNet-50 at 384x192, 60
epochs, with ``--config.model.imagenet`` for the paper's ImageNet start) instead.
The numbers this config gives are in the README's "Market-1501, measured".
"""

from experiments import base


def get_config():
  config = base.training_config()
  config.data.dataset = "market1501"
  config.data.image_size = (96, 48)
  config.train.batch_size = 32
  config.train.epochs = 28
  config.model.depth = 18
  config.model.width = 32
  config.optimizer.lr = 0.01
  config.optimizer.decay_epochs = (21,)
  config.optimizer.warmup_epochs = 1.0
  config.eval.batch_size = 128
  config.log_every_steps = 100
  config.checkpoint.every_steps = 1000
  return config
