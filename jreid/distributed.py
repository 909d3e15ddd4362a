"""Multi-host start-up: jax.distributed.initialize() where a job spans hosts."""

import os

from absl import logging
import jax

_CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_NTASKS",
                "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS")


def looks_multi_host() -> bool:
  """True where the environment describes a cluster that jax.distributed can read."""
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if "," in hosts:
    return True
  return any(os.environ.get(k) for k in _CLUSTER_ENV[1:])


def maybe_initialize(force: bool | None = None) -> None:
  """Initialises jax.distributed when asked (or, with force=None, when multi-host)."""
  if force or (force is None and looks_multi_host()):
    jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
