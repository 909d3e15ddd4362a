"""The reference recipe (docs/reference.md section 6) on the real Market-1501.

  python main.py --workdir=/tmp/jreid_market --config=experiments/market1501.py \
    --config.manual_dir=/path/holding/Market-1501-v15.09.15.zip \
    [--config.model.imagenet=$HOME/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth]

ResNet-50 PCB at 384x192, batch 32, 60 epochs, SGD (backbone 0.01, heads 0.1, x0.1
after epoch 40), flip + random erasing; then features, ST model, evaluation and
re-ranking. The reference initialises the backbone from ImageNet: pass a torchvision
or timm ResNet-50 state dict with --config.model.imagenet.
"""

from experiments import base


def get_config():
  config = base.training_config()
  config.data.dataset = "market1501"
  return config
