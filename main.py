"""jreid: train, extract, fuse with the spatial-temporal prior, evaluate.

  python main.py --workdir=DIR --config=experiments/NAME.py [--config.field=value ...]
"""

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, features, results, plots.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: when "
                  "the environment looks like a multi-host job).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for an explicit "
                    "multi-process run (otherwise auto-detected on TPU pods and clusters).")
flags.DEFINE_integer("num_processes", None, "Processes of an explicit multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in an explicit run.")
flags.mark_flags_as_required(["workdir", "config"])


class _QuietLibraries(std_logging.Filter):
  """Keeps INFO chatter of orbax and TFDS out of the log (warnings still pass)."""
  _NOISY = ("/orbax/", "/tensorflow_datasets/")

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        n in record.pathname for n in self._NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from jreid import sharding  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize(FLAGS.distributed, FLAGS.coordinator_address,
                               FLAGS.num_processes, FLAGS.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() > 0:  # the log of record comes from process 0
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger().setLevel(std_logging.WARNING)
  from jreid import pipeline  # pylint: disable=g-import-not-at-top
  logging.info("config:\n%s", FLAGS.config)
  pipeline.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
