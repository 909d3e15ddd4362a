"""evaluate.evaluate over a sharded gallery: devices and processes do not change the ranks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jreid import evaluate
from jreid import records
from jreid import scoring

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = ("visual", "st", "visual_rerank", "st_rerank")

# Runs in a child process: every method's ranks and the top items, on the mesh of all
# devices (of all processes) and, in process 0, on a mesh of one device; prints them
# as JSON.
_CHILD = r"""
import json, sys
import numpy as np
import jax
sys.path.insert(0, ".")
from jreid import evaluate, records, scoring, sharding
coordinator, num_processes, process_id = sys.argv[1:4]
if coordinator != "none":
  sharding.maybe_initialize(coordinator_address=coordinator, num_processes=int(num_processes),
                            process_id=int(process_id))
rng = np.random.default_rng(0)
centres = rng.normal(size=(9, 8))
def side(n, low):
  pid = rng.integers(low, 9, n)
  f = centres[np.maximum(pid, 0)] + 0.9 * rng.normal(size=(n, 8))
  return records.Records(pid, rng.integers(0, 3, n), rng.integers(0, 3000, n),
                         scoring.l2_normalise_features(f.astype(np.float32)))
query, gallery = side(13, 1), side(60, -1)   # 73 items: odd, so the last block is padded
table = rng.uniform(size=(3, 3, 40)).astype(np.float32)
table /= table.sum(axis=2, keepdims=True)
kw = dict(bin_width=100, fusion=scoring.FusionParams(), methods=%(methods)r,
          rerank=evaluate.RerankParams(6, 3, 0.3), budget_elements=%(budget)d)
out = {"devices": jax.device_count()}
def run(mesh):
  ranks, top = evaluate.method_ranks(query, gallery, table, mesh=mesh, top_k=9, **kw)
  found = {k: v.tolist() for k, v in ranks.items()}
  found.update(top_index=top.index.tolist(), top_score=top.score.tolist())
  return found
out["all"] = run(sharding.make_mesh())
if jax.process_index() == 0:
  out["one"] = run(jax.make_mesh((1,), ("data",), devices=jax.local_devices()[:1]))
print("RESULT " + json.dumps(out))
"""


def _child(methods, budget, *args, env=None):
  code = _CHILD % dict(methods=tuple(methods), budget=budget)
  return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][-1][7:])


def _assert_same(found, expected):
  """Ranks and top items identical; the top items' cosines equal to 1 ulp-scale error.

  Each layout computes its cosines with matmuls of its own shapes (a whole gallery
  tile on one device, half of it on each of two), and XLA:CPU may sum a dot product in
  another order for other shapes (on an AVX-512 machine: 6 of 117 cosines, up to 1e-7
  relative), so the scores are compared to rtol 1e-6 and everything ranked from them
  exactly.
  """
  found, expected = dict(found), dict(expected)
  np.testing.assert_allclose(found.pop("top_score"), expected.pop("top_score"), rtol=1e-6,
                             atol=0)
  assert found == expected


@pytest.mark.parametrize("methods, budget", [(ALL, 200), (("visual", "st"), 40)])
def test_two_devices_equal_one_device(methods, budget):
  # budget 40 with 30 columns per device: 8 queries per chunk < 128, so the gallery
  # columns are tiled (two sweeps) on top of the split over devices.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  found = _result(_child(methods, budget, "none", "1", "0", env=env))
  assert found["devices"] == 2
  _assert_same(found["all"], found["one"])
  assert set(found["all"]) == set(methods) | {"top_index", "top_score"}


def test_two_processes_equal_one_process():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  port = 21000 + os.getpid() % 20000
  procs = [_child(ALL, 200, f"localhost:{port}", "2", str(i), env=env) for i in range(2)]
  first, second = [_result(p) for p in procs]
  assert first["devices"] == 2
  assert first["all"] == second["all"]  # every process ends with the same lists
  _assert_same(first["all"], first["one"])


def _tiny(seed=0, Q=6, G=20):
  rng = np.random.default_rng(seed)
  make = lambda n: records.Records(rng.integers(1, 4, n), rng.integers(0, 2, n),
                                   rng.integers(0, 500, n),
                                   scoring.l2_normalise_features(rng.normal(size=(n, 4)).astype(np.float32)))
  return make(Q), make(G)


def test_registry_and_bad_requests():
  assert set(evaluate.METHODS) == set(ALL)
  q, g = _tiny()
  with pytest.raises(ValueError, match=r"unknown evaluation methods \['nope'\]"):
    evaluate.evaluate(q, g, None, bin_width=100, methods=["nope"])
  with pytest.raises(ValueError, match="need an ST table"):
    evaluate.evaluate(q, g, None, bin_width=100, methods=["visual", "st_rerank"])
  with pytest.raises(ValueError, match="the gallery is empty"):
    evaluate.evaluate(q, g.select(np.zeros(len(g), bool)), None, bin_width=100,
                      methods=["visual"])
  with pytest.raises(ValueError, match="4 dims but gallery features 3"):
    evaluate.evaluate(q, g.with_features(g.features[:, :3]), None, bin_width=100,
                      methods=["visual"])


def test_hand_case_through_evaluate():
  # 1 query (id 1, camera 0) at angle 0; gallery items at angles 0.9 (id 2), 0.5 (id 1,
  # camera 1: good), 0.1 (id 2: a negative), 0.3 (id 1, camera 0: junk). Score order
  # 2, 3, 1, 0; after junk removal 2, 1, 0: the good item is at rank 1.
  angle = np.array([0.0, 0.9, 0.5, 0.1, 0.3])
  f = np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
  q = records.Records(np.array([1]), np.array([0]), np.array([0]), f[:1])
  g = records.Records(np.array([2, 1, 2, 1]), np.array([0, 1, 1, 0]), np.zeros(4, int), f[1:])
  ranks = evaluate.method_ranks(q, g, None, bin_width=100, fusion=scoring.FusionParams(),
                                methods=["visual"])[0]["visual"]
  assert ranks.tolist() == [[1, 2**31 - 1]]  # id 1 has 2 gallery images: one column pads
  m = evaluate.evaluate(q, g, None, bin_width=100, methods=["visual"], max_rank=3)["visual"]
  assert m.cmc.tolist() == [0.0, 1.0, 1.0]
  # Trapezoid AP: (previous precision 0/1 + precision 1/2) / 2.
  assert m.mAP == 0.25 and m.mAP_plain == 0.5 and m.num_valid_queries == 1


def _dyadic_world(seed=0, Q=7, G=50, D=8, C=3, H=6, width=10):
  """Dyadic features (exact dot products in any order, so tiles cannot change a score),
  ties (gallery rows 10..14 repeat rows 0..4), junk of both kinds (ids -1; the query's
  id in its camera) and an ST table with zero same-camera bins."""
  rng = np.random.default_rng(seed)
  gf = rng.integers(-4, 5, (G, D)).astype(np.float32) / 8
  gc, gt = rng.integers(0, C, G), rng.integers(0, width * (H + 2), G)
  gf[10:15], gc[10:15], gt[10:15] = gf[0:5], gc[0:5], gt[0:5]
  gid = np.arange(G) % 9
  gid[rng.random(G) < 0.2] = -1
  qf = rng.integers(-4, 5, (Q, D)).astype(np.float32) / 8
  qf[0] = gf[0]
  query = records.Records(np.arange(Q), rng.integers(0, C, Q), rng.integers(0, width * (H + 2), Q),
                          qf)
  table = rng.random((C, C, H))
  for c in range(C):
    table[c, c] = 0
  return query, records.Records(gid, gc, gt, gf), table


@pytest.mark.parametrize("with_st", [True, False])
@pytest.mark.parametrize("methods, budget", [
    (ALL, 1 << 20),               # re-ranking: one tile of all items, queries left out
    (("visual", "st"), 60),       # columns tiled, two sweeps, a shifted last tile
    ((), 1 << 20)])               # the top items alone
def test_top_items_equal_search_top_k(with_st, methods, budget):
  from jreid import search, st  # pylint: disable=g-import-not-at-top
  query, gallery, table = _dyadic_world()
  model = st.STModel(table=table, params=st.STParams(bin_width=10, num_bins=table.shape[2]))
  methods = [m for m in methods if with_st or evaluate.METHODS[m].score == "visual"]
  _, got = evaluate.method_ranks(query, gallery, table if with_st else None, bin_width=10,
                                 fusion=scoring.FusionParams(), methods=methods,
                                 rerank=evaluate.RerankParams(6, 3, 0.3),
                                 budget_elements=budget, top_k=12)
  want = search.top_k(query, gallery, model if with_st else None, scoring.FusionParams(), k=12,
                      leave_out_junk=True)
  assert got.ranked_by == ("joint" if with_st else "visual")
  np.testing.assert_array_equal(got.index, want.index)
  np.testing.assert_array_equal(got.score, want.score)
  np.testing.assert_array_equal(got.visual, want.visual)


def test_top_items_end_with_junk_when_too_few_are_left():
  # 6 gallery items, 3 of them junk for the query (id -1 twice; its id in its camera):
  # the 3 others by score, then the junk items by index with score -inf.
  f = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8], [0.8, 0.6], [1, 0]], np.float32)
  q = records.Records(np.array([5]), np.array([0]), np.array([0]), f[:1])
  g = records.Records(np.array([-1, 7, 5, 8, -1, 5]), np.array([1, 1, 0, 1, 0, 1]),
                      np.zeros(6, int), f)
  _, top = evaluate.method_ranks(q, g, None, bin_width=100, fusion=scoring.FusionParams(),
                                 methods=["visual"], top_k=10)
  assert top.index.tolist() == [[5, 3, 1, 0, 2, 4]]
  np.testing.assert_allclose(top.score[0, :3], [1.0, 0.6, 0.0])
  assert np.isneginf(top.score[0, 3:]).all()
  # It is what search.top_k gives (visual -inf for junk there too).
  from jreid import search  # pylint: disable=g-import-not-at-top
  want = search.top_k(q, g, None, scoring.FusionParams(), k=10, leave_out_junk=True)
  np.testing.assert_array_equal(top.index, want.index)
  np.testing.assert_array_equal(top.visual, want.visual)
  assert top.ranked_by == want.ranked_by == "visual"
  with pytest.raises(ValueError, match="top_k"):
    evaluate.method_ranks(q, g, None, bin_width=100, fusion=scoring.FusionParams(),
                          methods=["visual"], top_k=-1)


def test_plan_sizes_and_backend_choices():
  from jreid.evaluation import plan as plan_lib  # pylint: disable=g-import-not-at-top
  cpu, gpu = plan_lib.make_plan(1000, "cpu"), plan_lib.make_plan(1000, "gpu")
  assert cpu.gather_step_elements == 1 << 20 and cpu.compiler_options == ()
  assert gpu.gather_step_elements is None
  assert dict(gpu.compiler_options) == {"xla_gpu_autotune_level": 0}
  # Square tiles: sqrt(1000) -> 31 items at most, so 100 items take 4 tiles of 25 -> 32
  # (a multiple of 8), and the block is 4 tiles.
  assert cpu.square_tiles(100, 5) == (32, 128)
  # Pair chunks: 4 x 1000 // 300 = 13 -> 8 rows; the CPU gathers 2^20 // 300 = 3495 rows
  # a step, more than the chunk, so one step of 8; on GPU the chunk is one gather.
  assert cpu.pair_chunks(50, 300) == (8, 8) and gpu.pair_chunks(50, 300) == (8, 8)
  small = plan_lib.Plan(budget_elements=1000, gather_step_elements=600)
  assert small.pair_chunks(50, 300) == (8, 2)   # 2 rows a step, 4 steps a chunk
  # Ranks chunks: without re-ranking a big block keeps 128 query rows, with narrower tiles.
  assert cpu.ranks_chunks(500, 100, rerank=False) == (128, 7)
  assert cpu.ranks_chunks(500, 100, rerank=True) == (8, 100)
  assert plan_lib.Plan.term_slots(1) == 1024 and plan_lib.Plan.term_slots(1025) == 2048
  with pytest.raises(ValueError, match="budget_elements"):
    plan_lib.make_plan(0, "cpu")


def test_the_gpu_plan_gives_the_cpu_plans_ranks_on_a_cpu(monkeypatch):
  # The GPU plan gathers the pair pass's member features in one step and asks for
  # autotuning off; the CPU plan, here with steps of one row, gathers row by row: the
  # same ranks and top items.
  from jreid.evaluation import plan as plan_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(plan_lib, "CPU_GATHER_STEP_ELEMENTS", 1)
  assert plan_lib.make_plan(1 << 20, "cpu").pair_chunks(40, 64)[1] == 1
  query, gallery, table = _dyadic_world()
  kw = dict(bin_width=10, fusion=scoring.FusionParams(), methods=ALL,
            rerank=evaluate.RerankParams(6, 3, 0.3), budget_elements=1 << 20, top_k=5)
  cpu_ranks, cpu_top = evaluate.method_ranks(query, gallery, table, backend="cpu", **kw)
  gpu_ranks, gpu_top = evaluate.method_ranks(query, gallery, table, backend="gpu", **kw)
  for m in ALL:
    np.testing.assert_array_equal(cpu_ranks[m], gpu_ranks[m])
  np.testing.assert_array_equal(cpu_top.index, gpu_top.index)
  np.testing.assert_array_equal(cpu_top.joint, gpu_top.joint)
