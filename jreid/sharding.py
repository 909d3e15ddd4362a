"""Where arrays live: the device mesh, its shardings, global batches, process 0, start-up.

Every job runs one SPMD program over a 1-D mesh of every device of every process,
axis ``data``. Batches (training, extraction) and galleries (evaluation) are split
over that axis; parameters and small tables are replicated. This is the only module
that builds meshes or shardings, and the only one that starts ``jax.distributed``.
No TensorFlow, no configs.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

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


def is_main_process() -> bool:
  """Results, plots, TensorBoard and logs of record are written by process 0 only."""
  return jax.process_index() == 0


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis ``data``."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading axis split over ``data`` (batches, gallery rows)."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A full copy on every device (parameters, optimiser state, ST tables)."""
  return NamedSharding(mesh, P())


def named(mesh: jax.sharding.Mesh, spec: P | None = None) -> NamedSharding:
  """The mesh's sharding of a partition spec (None: ``replicated``)."""
  return replicated(mesh) if spec is None else NamedSharding(mesh, spec)


def to_global(batch, sharding: jax.sharding.Sharding):
  """Process-local numpy arrays (a pytree) -> global jax.Arrays sharded by ``sharding``.

  Each process passes its own rows; the global leading axis is their concatenation
  in process order (``jax.make_array_from_process_local_data``).
  """
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def gather(x: jax.Array) -> np.ndarray:
  """A global (possibly multi-process) array, whole, on every process's host."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync(name: str) -> None:
  """A barrier over every process (a no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
