"""Training losses of the visual stream, as pure functions of arrays.

- ``cross_entropy``: softmax cross-entropy with optional label smoothing
  (Szegedy et al. 2016; Luo et al. 2019 use epsilon 0.1);
- ``part_losses``: that cross-entropy for each PCB part (P = 1 for a global head);
- ``batch_hard_triplet``: the batch-hard triplet loss (Hermans et al. 2017) on
  Euclidean distances, hardest positive and hardest negative of each anchor;
- ``reid_loss``: their weighted sum, the loss every config trains with.

No configs are read here; the training step passes the weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jreid import sharding as sharding_lib


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
  """Softmax cross-entropy with label smoothing, per example: [..., K], [...] -> [...].

  The target is q = (1 - eps) one_hot(label) + eps / K (K classes), so the loss is
  -sum_k q_k log p_k; eps = 0 is the plain cross-entropy.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  if not label_smoothing:
    return -picked
  return -(1.0 - label_smoothing) * picked - label_smoothing * logp.mean(axis=-1)


def part_losses(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                ) -> jax.Array:
  """Cross-entropy of each part, mean over the batch: [B, P, K], [B] -> [P]."""
  return cross_entropy(logits, labels[:, None], label_smoothing).mean(axis=0)


def _replicated(x: jax.Array) -> jax.Array:
  """x gathered on every device when it is sharded explicitly (pairwise terms need all rows)."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or all(s is None for s in sharding.spec):
    return x
  return jax.sharding.reshard(x, sharding_lib.replicated(mesh))


def euclidean_distances(x: jax.Array) -> jax.Array:
  """[B, D] -> [B, B] Euclidean distances (float32), exactly 0 on the diagonal.

  sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12)) as Luo et al.'s code: the clamp keeps the
  gradient finite where two embeddings coincide.
  """
  x = _replicated(x).astype(jnp.float32)
  sq = jnp.sum(x * x, axis=-1)
  d2 = sq[:, None] + sq[None, :] - 2.0 * jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)
  d2 = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d2)
  return jnp.sqrt(jnp.maximum(d2, 1e-12))


def batch_hard_triplet(embeddings: jax.Array, labels: jax.Array, margin: float = 0.3
                       ) -> jax.Array:
  """Batch-hard triplet loss: mean_a max(0, d(a, hardest p) - d(a, hardest n) + margin).

  Args:
    embeddings: [B, D] features (any units); distances are Euclidean.
    labels: [B] identity labels.
    margin: the margin, in the embeddings' distance units (0.3 in Luo et al.).

  Returns:
    The scalar loss. For each anchor the hardest positive is the farthest image of
    its identity (itself, at distance 0, when it is alone) and the hardest negative
    the nearest image of another identity; an anchor with no negative in the batch
    contributes 0.
  """
  d = euclidean_distances(embeddings)
  labels = _replicated(labels)
  same = labels[:, None] == labels[None, :]
  hardest_positive = jnp.max(jnp.where(same, d, 0.0), axis=1)
  hardest_negative = jnp.min(jnp.where(same, jnp.inf, d), axis=1)
  has_negative = jnp.isfinite(hardest_negative)
  hinge = jnp.maximum(hardest_positive - jnp.where(has_negative, hardest_negative, 0.0) + margin,
                      0.0)
  return jnp.mean(jnp.where(has_negative, hinge, 0.0))


def reid_loss(logits: jax.Array, embeddings: jax.Array, labels: jax.Array, *,
              label_smoothing: float = 0.0, triplet_weight: float = 0.0, margin: float = 0.3
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Sum of the part cross-entropies plus triplet_weight x the batch-hard triplet loss.

  Args:
    logits: [B, P, K] classifier outputs (P = 1 for a global head).
    embeddings: [B, P, C] the features the triplet loss compares (flattened to
      [B, P * C]: the pre-BN global feature for BNNeck, the pooled parts for PCB).
    labels: [B] identity labels in [0, K).

  Returns:
    (total loss, {"cross_entropy": sum over parts, "triplet": the triplet term}).
  """
  ce = part_losses(logits, labels, label_smoothing).sum()
  if triplet_weight:
    triplet = batch_hard_triplet(embeddings.reshape(embeddings.shape[0], -1), labels, margin)
  else:
    triplet = jnp.zeros((), jnp.float32)
  return ce + triplet_weight * triplet, {"cross_entropy": ce, "triplet": triplet}
