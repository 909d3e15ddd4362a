"""What every evaluation pass shares: placement on the mesh, item columns, score kinds, timing.

Host arrays become global arrays through ``Placement`` (every process passes the
same values); the items that the score tiles run over are ``Columns``, split over
the mesh's ``data`` axis; ``kind_scores`` gives a score kind's scores from
cosine scores; ``Timer`` compiles each kernel with the plan's options and logs
compilation and run time apart.
"""

from __future__ import annotations

import resource
import time
from typing import Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jreid import records as records_lib
from jreid import scoring
from jreid import sharding
from jreid.evaluation import plan as plan_lib

AXIS = sharding.DATA_AXIS
# "visual": cosine; "st": cosine fused with the ST prior (the joint score).
SCORE_KINDS = ("visual", "st")


class Method(NamedTuple):
  """One ranking: ``score`` is the score kind ("visual": cosine; "st": cosine fused with
  the ST prior); ``rerank`` applies k-reciprocal re-ranking to that kind's distance."""
  score: str
  rerank: bool = False
# An empty slot of a neighbour or top-item list: index int32 max (distance +inf).
EMPTY_INDEX = np.iinfo(np.int32).max


def kind_scores(kind: str, cosine, st_factors, bin_width, fusion, q_cameras, q_times,
                g_cameras, g_times):
  """Scores (larger is better) of one kind from cosine scores of any broadcastable shape;
  ``st_factors`` is ``scoring.st_factor_table`` of the ST table, cameras 0-based, times
  in the table's frames."""
  if kind == "visual":
    return cosine
  factors = scoring.pair_st_factors(st_factors, bin_width, q_cameras, q_times, g_cameras,
                                    g_times)
  return scoring.joint_scores_from_factors(cosine, factors, fusion)


class Timer:
  """Compilation and run time of the kernels of one evaluation, logged apart."""

  def __init__(self, plan: plan_lib.Plan):
    self.plan = plan
    self.compile_s = 0.0
    self.run_s: dict[str, float] = {}

  def compile(self, name: str, fn: Callable, *args, donate_argnums=()):
    """``fn`` jitted and compiled for ``args``, with the plan's compiler options."""
    start = time.time()
    lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
    compiled = None
    options = dict(self.plan.compiler_options)
    if options:
      try:
        compiled = lowered.compile(compiler_options=options)
      except Exception as e:  # pylint: disable=broad-except  (an XLA without the option)
        logging.warning("evaluate: compiling %s with %s failed (%s); compiling with the "
                        "defaults", name, options, e)
    if compiled is None:
      compiled = lowered.compile()
    spent = time.time() - start
    self.compile_s += spent
    logging.info("evaluate: compiled %s in %.2f s", name, spent)
    return compiled

  def add(self, name: str, seconds: float):
    self.run_s[name] = self.run_s.get(name, 0.0) + seconds
    logging.info("evaluate: %s took %.2f s (peak RSS so far %.0f MB)", name, seconds,
                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class Placement:
  """Host arrays -> global arrays on the mesh (every process passes the same values)."""

  def __init__(self, mesh):
    self.mesh = mesh
    self.devices = mesh.size
    self.copies = sharding.replicated(mesh)

  def named(self, spec=None) -> jax.sharding.NamedSharding:
    """The mesh's sharding of ``spec`` (None: replicated)."""
    return sharding.named(self.mesh, spec)

  def put(self, x, spec=None):
    x = np.asarray(x)
    target = self.named(spec)
    if jax.process_count() == 1:
      return jax.device_put(x, target)  # on CPU with one device: aliases the host array
    return jax.make_array_from_callback(x.shape, target, lambda index: x[index])

  def shard_rows(self, x):
    return self.put(x, P(AXIS))

  def shard_columns(self, x):
    return self.put(x, P(None, AXIS))


def host(x: jax.Array) -> np.ndarray:
  """A replicated output, on this process's host."""
  return np.asarray(x.addressable_data(0))


class Columns(NamedTuple):
  """The items split over the mesh (columns of every score tile), padded to devices x L."""
  features: jax.Array   # float32 [devices L, D]
  cameras: jax.Array    # int32 [devices L], 0-based
  times: jax.Array      # int32 [devices L]
  ranked: jax.Array     # bool [devices L]: a gallery item (not a query item, not padding)
  junk: jax.Array       # bool [devices L]: gallery id -1 (junk for every query)


COLUMNS_SPEC = Columns(*(P(AXIS),) * 5)


def columns(place: Placement, features, cameras, times, ranked, junk,
            block: int | None = None) -> tuple[Columns, int]:
  """The items as sharded columns, ``block`` (default: as few as fit) per device."""
  n = len(cameras)
  block = block or -(-n // place.devices)
  total = block * place.devices
  pad = lambda x, v: records_lib.pad_rows(x, total, v)
  if total != n:
    features = pad(np.asarray(features, np.float32), 0.0)
  cols = Columns(place.shard_rows(np.asarray(features, np.float32)),
                 place.shard_rows(pad(np.asarray(cameras, np.int32), 0)),
                 place.shard_rows(pad(np.asarray(times, np.int32), 0)),
                 place.shard_rows(pad(np.asarray(ranked, bool), False)),
                 place.shard_rows(pad(np.asarray(junk, bool), False)))
  return cols, block


def block_offset(block: int):
  """The first item index of this device's block (inside ``shard_map``)."""
  return jax.lax.axis_index(AXIS).astype(jnp.int32) * block


def merge_nearest(dists, indices, k, payloads=()):
  """The k smallest (distance, index) pairs of each row over candidate lists,
  lexicographically (ties go to the lower index).

  Args:
    dists, indices: sequences of float32 / int32 [..., M_l] lists, joined on the last axis.
    payloads: sequences of [..., M_l] lists that travel with their pairs.
  Returns:
    (float32 [..., k], int32 [..., k], then each payload [..., k]).
  """
  operands = tuple(jnp.concatenate(x, axis=-1) for x in (dists, indices, *payloads))
  operands = jax.lax.sort(operands, dimension=operands[0].ndim - 1, num_keys=2)
  return tuple(x[..., :k] for x in operands)


def chunks(total: int, rows: int):
  """(start, stop) of consecutive chunks of ``rows`` rows over ``total``."""
  for start in range(0, total, rows):
    yield start, min(total, start + rows)
