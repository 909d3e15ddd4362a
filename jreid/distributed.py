"""Multi-host start-up: jax.distributed.initialize() where a job spans processes."""

import os

from absl import logging
import jax

# Environment variables of launchers that jax.distributed.initialize() reads by itself.
_CLUSTER_ENV = ("MEGASCALE_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                "JAX_COORDINATOR_ADDRESS")


def looks_multi_host() -> bool:
  """True on a multi-host Cloud TPU slice or under a cluster launcher."""
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  return any(os.environ.get(k) for k in _CLUSTER_ENV)


def maybe_initialize(force: bool | None = None, coordinator_address: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None) -> None:
  """jax.distributed.initialize() when asked, when addresses are given, or when multi-host.

  Args:
    force: True to initialise, False never; None decides from the arguments and env.
    coordinator_address, num_processes, process_id: explicit cluster (e.g. several
      processes on one machine, or GPU hosts without a launcher); None: auto-detect.
  """
  explicit = coordinator_address is not None
  if force is False or not (force or explicit or looks_multi_host()):
    return
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
