"""Jitted score kernels over query x gallery blocks: visual, ST and joint.

Shapes: Q queries, G gallery images, D feature dims, C cameras, H bins.
Cameras are 0-based int32, times are global frame indices (int32), scores float32.
See ``docs/reference.md`` section 3.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class FusionParams:
  """Logistic smoothing f(x; lambda, gamma) = 1 / (1 + lambda exp(-gamma x)) of both streams."""
  visual_lambda: float = 1.0
  visual_gamma: float = 5.0
  st_lambda: float = 2.0
  st_gamma: float = 5.0


def l2_normalise_parts(features, xp=np):
  """[B, P, C] -> [B, P * C]: each part L2-normalised, then the whole vector (norms floored
  at 1e-12, so zero stays zero; s = mean over parts of the part cosines).

  ``xp`` is the array module: numpy (``l2_normalise_features``) or ``jax.numpy`` (the
  exported models); the one formula of both.
  """
  f = features / xp.maximum(xp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
  f = f.reshape(f.shape[0], f.shape[1] * f.shape[2])
  return f / xp.maximum(xp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def l2_normalise_features(features: np.ndarray, num_parts: int = 1,
                          chunk: int = 16384) -> np.ndarray:
  """Per-part then whole-vector L2 normalisation (``l2_normalise_parts``), as the reference,
  of float32 [N, D] features (D = P * d), in chunks. Works in place on float32 input,
  so peak memory stays at one copy and a chunk.
  """
  x = np.asarray(features)
  if x.dtype != np.float32:
    x = x.astype(np.float32)
  if x.ndim != 2 or x.shape[1] % num_parts:
    raise ValueError(f"features must be [N, D] with D divisible by num_parts={num_parts}, "
                     f"got shape {x.shape}")
  for start in range(0, x.shape[0], chunk):
    block = x[start:start + chunk]
    block[...] = l2_normalise_parts(block.reshape(-1, num_parts, x.shape[1] // num_parts))
  return x


def cosine_scores(query_features: jax.Array, gallery_features: jax.Array) -> jax.Array:
  """[Q, D] x [G, D] -> [Q, G] dot products of (already normalised) features."""
  return jnp.dot(query_features, gallery_features.T,
                 precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)


def st_probabilities(table: jax.Array, bin_width: int,
                     query_cameras: jax.Array, query_times: jax.Array,
                     gallery_cameras: jax.Array, gallery_times: jax.Array) -> jax.Array:
  """ST probability of every (query, gallery) pair: int32 [Q], [Q], [G], [G] -> float32 [Q, G].

  See ``pair_st_probabilities``.
  """
  return pair_st_probabilities(table, bin_width, query_cameras[:, None], query_times[:, None],
                               gallery_cameras[None, :], gallery_times[None, :])


def pair_st_probabilities(table: jax.Array, bin_width: int, query_cameras: jax.Array,
                          query_times: jax.Array, gallery_cameras: jax.Array,
                          gallery_times: jax.Array) -> jax.Array:
  """ST probability of (query, gallery) pairs given as broadcastable int32 arrays.

  If qt > gt: P[qc, gc, (qt - gt) // w], else P[gc, qc, (gt - qt) // w] (equal
  times take the second branch). Differences beyond the last bin, and cameras
  outside the table, give 0.

  Args:
    table: float32 [C, C, H].
    bin_width: frames per bin (static int).
    query_cameras, query_times, gallery_cameras, gallery_times: 0-based cameras and
      global frames, broadcastable to one shape S.
  Returns:
    float32 [S].
  """
  zero = jnp.zeros(table.shape[:2] + (1,), table.dtype)
  return pair_bin_values(jnp.concatenate([table, zero], axis=2), bin_width, query_cameras,
                         query_times, gallery_cameras, gallery_times)


def pair_bin_values(binned: jax.Array, bin_width: int, query_cameras: jax.Array,
                    query_times: jax.Array, gallery_cameras: jax.Array,
                    gallery_times: jax.Array) -> jax.Array:
  """The ST bin lookup: values of a per-camera-pair table [C, C, H + 1] for pairs.

  The pair's bin is |qt - gt| // w of the (later camera, earlier camera) row (equal
  times: the query counts as the earlier); bin H, the table's last, holds the value
  of differences beyond the last bin and of cameras outside the table.

  Args:
    binned: [C, C, H + 1] values (ST probabilities with a 0 bin, or their smoothed
      factors with f(0): ``st_factor_table``).
    bin_width: frames per bin (static int).
    query_cameras, query_times, gallery_cameras, gallery_times: 0-based cameras and
      global frames, broadcastable int32 arrays of one shape S.
  Returns:
    [S] values of ``binned``'s dtype.
  """
  C, _, H1 = binned.shape
  qc, qt, gc, gt = query_cameras, query_times, gallery_cameras, gallery_times
  query_later = qt > gt
  later = jnp.where(query_later, qc, gc)
  earlier = jnp.where(query_later, gc, qc)
  bins = jnp.minimum(jnp.abs(qt - gt) // bin_width, H1 - 1)
  valid = (later >= 0) & (later < C) & (earlier >= 0) & (earlier < C)
  flat = jnp.where(valid, (later * C + earlier) * H1 + bins, H1 - 1)
  return binned.reshape(-1)[flat]


def logistic(x: jax.Array, lam: float, gamma: float) -> jax.Array:
  """f(x; lambda, gamma) = 1 / (1 + lambda * exp(-gamma * x)), finite for every lambda >= 0
  and gamma >= 0: lambda 0 gives exactly 1 (where exp(-gamma x) overflows to inf,
  0 * inf would be NaN), and where lambda * exp(-gamma x) overflows the value is 0."""
  if isinstance(lam, (int, float)) and lam == 0:
    return jnp.ones_like(x, dtype=jnp.result_type(x, jnp.float32))
  return 1.0 / (1.0 + lam * jnp.exp(-gamma * x))


def joint_scores(visual: jax.Array, st_prob: jax.Array, fusion: FusionParams) -> jax.Array:
  """f(s; lambda_v, gamma_v) * f(p; lambda_st, gamma_st); larger is more similar."""
  return (logistic(visual, fusion.visual_lambda, fusion.visual_gamma)
          * logistic(st_prob, fusion.st_lambda, fusion.st_gamma))


def fused_scores(visual: jax.Array, st_table: jax.Array | None, bin_width: int,
                 fusion: FusionParams, query_cameras: jax.Array, query_times: jax.Array,
                 gallery_cameras: jax.Array, gallery_times: jax.Array) -> jax.Array:
  """[Q, G] visual scores, fused with the ST prior when ``st_table`` is given."""
  if st_table is None:
    return visual
  prob = st_probabilities(st_table, bin_width, query_cameras, query_times, gallery_cameras,
                          gallery_times)
  return joint_scores(visual, prob, fusion)


@functools.partial(jax.jit, static_argnames="fusion")  # one program, not one per op
def st_factor_table(table: jax.Array, fusion: FusionParams) -> jax.Array:
  """f(P; lambda_st, gamma_st) of every bin, float32 [C, C, H + 1]; bin H holds f(0).

  The ST factor of the joint score depends on the bin only, so kernels that score
  many pairs smooth the [C, C, H] table once and look the factor up
  (``pair_st_factors``) instead of smoothing every pair: the same float32 values.
  """
  table = jnp.asarray(table, jnp.float32)
  C, _, H = table.shape
  smoothed = logistic(table, fusion.st_lambda, fusion.st_gamma)
  zero = logistic(jnp.zeros((C, C, 1), jnp.float32), fusion.st_lambda, fusion.st_gamma)
  return jnp.concatenate([smoothed, zero], axis=2)


def pair_st_factors(factors: jax.Array, bin_width: int, query_cameras: jax.Array,
                    query_times: jax.Array, gallery_cameras: jax.Array,
                    gallery_times: jax.Array) -> jax.Array:
  """f(ST probability) of pairs from ``st_factor_table`` [C, C, H + 1] (broadcastable
  int32 arrays as in ``pair_st_probabilities``; out of range: f(0))."""
  return pair_bin_values(factors, bin_width, query_cameras, query_times, gallery_cameras,
                         gallery_times)


def joint_scores_from_factors(visual: jax.Array, st_factors: jax.Array,
                              fusion: FusionParams) -> jax.Array:
  """``joint_scores`` with the ST factor already looked up (``pair_st_factors``)."""
  return logistic(visual, fusion.visual_lambda, fusion.visual_gamma) * st_factors
