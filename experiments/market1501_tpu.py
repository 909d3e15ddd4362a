"""The reference recipe on a Cloud TPU VM or pod slice (every host runs this).

  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command "cd jreid && \
    .venv/bin/python main.py --workdir=gs://$BUCKET/jreid/market_tpu \
    --config=experiments/market1501_tpu.py \
    --config.data_dir=gs://$BUCKET/tensorflow_datasets \
    --config.manual_dir=gs://$BUCKET/manual"

bfloat16 compute (float32 parameters), global batch 256 split over every device of
every host, learning rates scaled linearly with the global batch from the
reference's 0.01 / 0.1 at batch 32 (lr = 0.01 * batch / 32, Goyal et al. 2017) with
a 5-epoch linear warm-up. The training images stay on each host, encoded, in memory
(Market-1501: ~65 MB). Checkpoints go to the workdir; a preemption (SIGTERM, or
orbax's preemption notice) saves, and the same command resumes.
"""

from experiments import base


def get_config():
  config = base.training_config()
  config.data.dataset = "market1501"
  config.train.batch_size = 256        # global; must divide by the number of devices
  config.eval.batch_size = 512
  config.model.dtype = "bfloat16"
  base.scale_learning_rate(config, reference_batch=32)
  config.optimizer.warmup_epochs = 5.0
  config.log_every_steps = 20
  config.checkpoint.every_steps = 200
  return config
