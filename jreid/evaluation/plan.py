"""The evaluation's plan: tile and chunk sizes from one memory budget, and the backend's choices.

Every quadratic piece of the evaluation (a score tile, a query chunk, a chunk of
member features) is sized here from ``budget_elements``, the bound on the
elements of one tile per device. The choices that depend on the backend travel
in the plan too, so that a test can run the GPU plan on a CPU:

* ``gather_step_elements`` (CPU): the re-ranking pair pass gathers member
  features in steps of this many floats (4 MB), since on CPU a gather of the whole
  chunk writes a fresh buffer on every call, and its page faults, not the
  arithmetic, took the time (4.8 s against 0.8 s at Market scale). None: one gather.
* ``compiler_options`` (GPU): XLA's autotuning off. The kernels' only matmuls are
  plain float32 GEMMs, whose default cuBLAS choice is what autotuning finds, while
  autotuning cost most of the cold start on an H200 (the whole job 78.9 s against
  19.6 s with level 0).
"""

from __future__ import annotations

import dataclasses
import math

import jax

from jreid import records as records_lib

# Query rows per chunk of the plain (no re-ranking) ranks pass, at least: with a big
# gallery the column tiles shrink instead.
MIN_QUERY_ROWS = 128
# The CPU's gather step of the pair pass, in floats (4 MB).
CPU_GATHER_STEP_ELEMENTS = 1 << 20
# Slots of the Jaccard terms of one query chunk: a multiple of this.
TERMS_MULTIPLE = 1024


@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes and backend choices of one evaluation.

  Attributes:
    budget_elements: bound on the score elements of one tile per device.
    gather_step_elements: see the module docstring (None: gather a chunk at once).
    compiler_options: XLA options of every kernel, as (name, value) pairs.
  """
  budget_elements: int = 1 << 22
  gather_step_elements: int | None = None
  compiler_options: tuple[tuple[str, object], ...] = ()

  def square_tiles(self, items_per_device: int, k: int) -> tuple[int, int]:
    """(tile T, block L) of the symmetric neighbour pass: T x T score tiles within the
    budget (T >= k, a multiple of 8), L = the per-device block, a multiple of T."""
    largest = max(k, 8, math.isqrt(max(1, self.budget_elements)))
    tiles = max(1, -(-items_per_device // largest))
    tile = max(k, -(-(-(-items_per_device // tiles)) // 8) * 8)
    return tile, tiles * tile

  def pair_chunks(self, num_items: int, row_elements: int) -> tuple[int, int]:
    """(rows per chunk, rows per gather step) of the pair pass, whose rows hold
    ``row_elements`` floats (members x feature dims); the chunk is a multiple of the step."""
    rows = records_lib.chunk_rows(num_items, row_elements, 4 * self.budget_elements)
    if self.gather_step_elements is None:
      return rows, rows
    step = min(rows, max(1, self.gather_step_elements // max(1, row_elements)))
    return -(-rows // step) * step, step

  def ranks_chunks(self, num_queries: int, block: int, rerank: bool) -> tuple[int, int]:
    """(query rows per chunk, column tile) of the ranks pass over blocks of ``block``
    items per device. With re-ranking the tile is the whole block (the Jaccard
    distances of a chunk are computed once); without, a big gallery gets query chunks
    of ``MIN_QUERY_ROWS`` and column tiles of a fraction of the block."""
    rows = records_lib.chunk_rows(num_queries, block, self.budget_elements)
    tile = block
    if not rerank and rows < min(num_queries, MIN_QUERY_ROWS):
      rows = min(num_queries, MIN_QUERY_ROWS)
      tile = min(block, records_lib.chunk_rows(block, rows, self.budget_elements))
    return rows, tile

  @staticmethod
  def term_slots(terms_per_chunk: int) -> int:
    """Jaccard term slots for chunks of at most ``terms_per_chunk`` terms."""
    return max(TERMS_MULTIPLE, -(-terms_per_chunk // TERMS_MULTIPLE) * TERMS_MULTIPLE)


def make_plan(budget_elements: int = 1 << 22, backend: str | None = None) -> Plan:
  """The plan for ``backend`` ("cpu", "gpu", "tpu"; None: JAX's default backend)."""
  if budget_elements < 1:
    raise ValueError(f"budget_elements must be >= 1, got {budget_elements}")
  backend = backend or jax.default_backend()
  return Plan(budget_elements=int(budget_elements),
              gather_step_elements=CPU_GATHER_STEP_ELEMENTS if backend == "cpu" else None,
              compiler_options=(("xla_gpu_autotune_level", 0),) if backend == "gpu" else ())
