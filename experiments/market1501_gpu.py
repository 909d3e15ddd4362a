"""The reference recipe on one multi-GPU host (or several, with --coordinator_address).

  python main.py --workdir=/tmp/jreid_market_gpu --config=experiments/market1501_gpu.py \
    --config.manual_dir=/data/market

bfloat16 compute, global batch 32 per GPU (128 on 4 GPUs by default; set
--config.train.batch_size to 32 x your GPU count), learning rates scaled linearly with the
global batch from the reference's batch 32, 2-epoch warm-up.
"""

from experiments import base


def get_config():
  config = base.training_config()
  config.data.dataset = "market1501"
  config.train.batch_size = 128
  config.eval.batch_size = 256
  config.model.dtype = "bfloat16"
  base.scale_learning_rate(config, reference_batch=32)
  config.optimizer.warmup_epochs = 2.0
  return config
