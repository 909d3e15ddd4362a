"""Job dispatch and the persistent compilation cache."""

import os
import subprocess
import sys

import numpy as np

import test_eval_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN_AND_COUNT_HITS = """
import sys, jax
from jax import monitoring
hits = []
monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
from experiments import eval_features
from jreid import jobs
config = eval_features.get_config()
config.features, config.train_dir, config.compilation_cache_dir = sys.argv[1:4]
config.st.num_bins = 300
config.rerank.enabled = False
jobs.run(config, sys.argv[4])
print("HITS", len(hits))
"""


def test_second_run_loads_compiled_programs_from_the_cache(tmp_path):
  train_dir, arrays = test_eval_features.make_case(tmp_path)
  features = tmp_path / "f.npz"
  np.savez(features, **arrays)
  cache = tmp_path / "xla_cache"
  hits = []
  for run in range(2):
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_AND_COUNT_HITS, str(features), str(train_dir), str(cache),
         str(tmp_path / f"work{run}")], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    hits.append(int(proc.stdout.split("HITS")[-1]))
  assert hits[0] == 0
  assert hits[1] > 0
  assert any(name.endswith("-cache") for name in os.listdir(cache))


def test_cache_folder_defaults_to_the_user_cache(monkeypatch, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  before = jax.config.jax_compilation_cache_dir
  try:
    assert jobs.enable_compilation_cache("default") == str(tmp_path / "jreid" / "xla")
    assert jobs.enable_compilation_cache("") is None
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
