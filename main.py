"""jreid: train, extract, fuse with the spatial-temporal prior, evaluate.

  python main.py --workdir=DIR --config=experiments/NAME.py [--config.field=value ...]

Errors a user can fix (a bad file, field or setting) print one or two lines;
``--debug`` shows the traceback and the whole config.
"""

import importlib.util
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, features, results, plots.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_bool("debug", False, "Show tracebacks and the whole config.")
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


def _load_config_file(argv):
  """The config file's get_config(), loaded as config_flags would (None if not found)."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if not path or not os.path.isfile(path.split(":")[0]):
    return None
  spec = importlib.util.spec_from_file_location("_jreid_config", path.split(":")[0])
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _explain_flag_error(argv, error) -> str:
  """One line for a bad --config.field: which field, and the fields its section has."""
  try:
    config = _load_config_file(argv)
  except Exception:  # pylint: disable=broad-except
    config = None
  if config is not None:
    for arg in argv:
      if not arg.startswith("--config."):
        continue
      node, path = config, arg[len("--config."):].split("=", 1)[0].split(".")
      for i, key in enumerate(path):
        if not hasattr(node, "keys") or key not in node:
          section = ".".join(path[:i]) or "config"
          fields = sorted(node.keys()) if hasattr(node, "keys") else []
          return (f"unknown config field {'.'.join(path[:i + 1])!r} (in {arg}): {section} "
                  f"has the fields {', '.join(fields)}")
        node = node[key]
  return f"bad flags: {str(error).splitlines()[0] if str(error) else type(error).__name__}"


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  (absl/ml_collections raise many)
    if "--debug" in argv or "--debug=true" in [a.lower() for a in argv]:
      raise
    print(f"error: {_explain_flag_error(argv, e)}", file=sys.stderr)
    sys.exit(2)


def _changed_fields(config) -> list[str]:
  """The config's fields that differ from the defaults of experiments/base.py."""
  from experiments import base  # pylint: disable=g-import-not-at-top
  defaults = (base.training_config() if config.job == "train_and_evaluate"
              else base.st_and_eval_config()).to_dict()

  def flat(d, base, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict) and isinstance(base.get(k), dict):
        yield from flat(v, base[k], f"{prefix}{k}.")
      else:  # a leaf, or a section the defaults lack (shown whole)
        yield f"{prefix}{k}", v
  before = dict(flat(defaults, defaults))
  return [f"{k}={v!r}" for k, v in flat(config.to_dict(), defaults)
          if before.get(k, object()) != v]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if os.environ.get("GLIBC_TUNABLES"):
    logging.info("GLIBC_TUNABLES=%s", os.environ["GLIBC_TUNABLES"])
  from jreid import errors  # pylint: disable=g-import-not-at-top
  from jreid import sharding  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize(FLAGS.distributed, FLAGS.coordinator_address,
                            FLAGS.num_processes, FLAGS.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() > 0:  # the log of record comes from process 0
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger().setLevel(std_logging.WARNING)
  if FLAGS.debug:
    logging.info("config:\n%s", FLAGS.config)
  else:
    logging.info("config %s, changed from the defaults: %s", FLAGS["config"].config_filename,
                 ", ".join(_changed_fields(FLAGS.config)) or "none")
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  from jreid import train  # pylint: disable=g-import-not-at-top
  try:
    jobs.run(FLAGS.config, FLAGS.workdir)
  except (errors.InputError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
          train.CheckpointMismatch, train.Preempted) as e:
    if FLAGS.debug:
      raise
    lines = str(e).strip().splitlines() or [type(e).__name__]
    print(f"error: {lines[0]}", file=sys.stderr)
    if len(lines) > 1:
      print("  " + " ".join(l.strip() for l in lines[1:])[:400], file=sys.stderr)
    print("  (run with --debug for the traceback)", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  from jreid import hostmem  # pylint: disable=g-import-not-at-top
  hostmem.reexec_with_huge_pages()  # XLA:CPU's step buffers on huge pages
  app.run(main, flags_parser=_parse_flags)
