"""Losses against hand-computed values: batch-hard triplet, label smoothing, part losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jreid import losses


def test_batch_hard_triplet_one_dimensional_hand_computed():
  # Points 0, 2, 2.5, 6 with ids 0, 0, 1, 1; margin 0.3.
  # anchor 0: hardest positive 2 (to 2), hardest negative 2.5 -> max(0, 2 - 2.5 + 0.3) = 0
  # anchor 2: positive 2, negative 0.5 (to 2.5)             -> 2 - 0.5 + 0.3 = 1.8
  # anchor 2.5: positive 3.5 (to 6), negative 0.5 (to 2)     -> 3.5 - 0.5 + 0.3 = 3.3
  # anchor 6: positive 3.5, negative 4 (to 2)                -> 0
  x = jnp.array([[0.0], [2.0], [2.5], [6.0]])
  got = losses.batch_hard_triplet(x, jnp.array([0, 0, 1, 1]), margin=0.3)
  np.testing.assert_allclose(got, (1.8 + 3.3) / 4, rtol=1e-6)


def test_batch_hard_triplet_uses_euclidean_not_squared_distances():
  # (0,0) and (3,4) are id 0 (distance 5), (0,4) is id 1 (distances 4 and 3).
  # anchor (0,0): 5 - 4 + 0.3 = 1.3; anchor (3,4): 5 - 3 + 0.3 = 2.3;
  # anchor (0,4) is alone: hardest positive itself (0) -> max(0, 0 - 3 + 0.3) = 0.
  x = jnp.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
  got = losses.batch_hard_triplet(x, jnp.array([7, 7, 2]), margin=0.3)
  np.testing.assert_allclose(got, (1.3 + 2.3) / 3, rtol=1e-6)
  # Margin 0 and a larger one move the hinge exactly.
  np.testing.assert_allclose(losses.batch_hard_triplet(x, jnp.array([7, 7, 2]), 0.0),
                             (1.0 + 2.0) / 3, rtol=1e-6)
  np.testing.assert_allclose(losses.batch_hard_triplet(x, jnp.array([7, 7, 2]), 3.5),
                             (4.5 + 5.5 + 0.5) / 3, rtol=1e-6)


def test_batch_hard_triplet_no_negative_and_finite_gradient_at_coincident_points():
  x = jnp.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
  # One identity only: no negatives, the loss is 0.
  assert float(losses.batch_hard_triplet(x, jnp.array([0, 0, 0]))) == 0.0
  # Coincident points of two identities: every hinge is the margin, gradient finite.
  labels = jnp.array([0, 0, 1])
  np.testing.assert_allclose(losses.batch_hard_triplet(x, labels, 0.3), 0.3, rtol=1e-5)
  g = jax.grad(lambda e: losses.batch_hard_triplet(e, labels, 0.3))(x)
  assert np.all(np.isfinite(np.asarray(g)))


def test_batch_hard_triplet_matches_a_numpy_brute_force():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 5)).astype(np.float32)
  labels = np.repeat(np.arange(4), 4)
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  expected = np.mean([max(0.0, max(d[a, p] for p in range(16) if labels[p] == labels[a])
                          - min(d[a, n] for n in range(16) if labels[n] != labels[a]) + 0.3)
                      for a in range(16)])
  np.testing.assert_allclose(losses.batch_hard_triplet(jnp.asarray(x), jnp.asarray(labels)),
                             expected, rtol=1e-5)


def test_label_smoothing_hand_computed():
  # Softmax of (0, 0, ln 2) is (1/4, 1/4, 1/2); label 2, eps 0.1, K 3:
  # q = (0.1/3, 0.1/3, 0.9 + 0.1/3); -sum q log p = ln 2 (0.9 + 0.1 (2 + 2 + 1) / 3).
  logits = jnp.array([[0.0, 0.0, math.log(2.0)]])
  got = losses.cross_entropy(logits, jnp.array([2]), label_smoothing=0.1)
  np.testing.assert_allclose(got, [math.log(2.0) * (0.9 + 0.1 * 5 / 3)], rtol=1e-6)
  np.testing.assert_allclose(losses.cross_entropy(logits, jnp.array([2])), [math.log(2.0)],
                             rtol=1e-6)
  # Smoothing 1: the uniform target, the mean of -log p = (2 ln 4 + ln 2) / 3.
  np.testing.assert_allclose(losses.cross_entropy(logits, jnp.array([0]), 1.0),
                             [5 * math.log(2.0) / 3], rtol=1e-6)


def test_part_losses_and_reid_loss():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(3, 2, 5)), jnp.float32)
  labels = jnp.array([0, 1, 4])
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  parts = losses.part_losses(logits, labels)
  assert parts.shape == (2,)
  np.testing.assert_allclose(parts[1], -(logp[0, 1, 0] + logp[1, 1, 1] + logp[2, 1, 4]) / 3,
                             rtol=1e-6)
  emb = jnp.array([[[0.0], [0.0]], [[2.0], [0.0]], [[2.5], [0.0]]])  # [B, P=2, C=1]
  total, terms = losses.reid_loss(logits, emb, labels, triplet_weight=0.5, margin=0.3)
  # Every id is alone: each hardest positive is 0, so hinge(0 - nearest + 0.3) = 0 here.
  np.testing.assert_allclose(terms["triplet"], 0.0)
  np.testing.assert_allclose(total, parts.sum(), rtol=1e-6)
  total, terms = losses.reid_loss(logits, emb, jnp.array([0, 0, 1]), triplet_weight=0.5,
                                  label_smoothing=0.1)
  # ids 0, 0, 1 on points 0, 2, 2.5: hinges 2 - 2.5 + .3 = 0, 2 - .5 + .3 = 1.8, 0 -> 0.6
  np.testing.assert_allclose(terms["triplet"], 0.6, rtol=1e-6)
  np.testing.assert_allclose(
      total, losses.part_losses(logits, jnp.array([0, 0, 1]), 0.1).sum() + 0.3, rtol=1e-6)


def test_batch_hard_triplet_on_a_sharded_batch():
  # The training step gets the batch sharded explicitly over the mesh's "data" axis.
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharded = NamedSharding(mesh, P("data"))
  x = jax.device_put(jnp.array([[0.0], [2.0], [2.5], [6.0]] * jax.device_count()), sharded)
  labels = jax.device_put(jnp.array([0, 0, 1, 1] * jax.device_count()), sharded)
  loss = jax.jit(lambda e: losses.batch_hard_triplet(e, labels, 0.3))
  np.testing.assert_allclose(loss(x), (1.8 + 3.3) / 4, rtol=1e-6)
  assert jax.jit(jax.grad(lambda e: losses.batch_hard_triplet(e, labels, 0.3)))(x).shape == x.shape
