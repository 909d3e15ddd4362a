"""Cloud runs without a cloud: gs:// paths through a local stand-in, TPU/GPU configs."""

import contextlib
import json
import os
from unittest import mock

import numpy as np
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing

from experiments import market1501_gpu
from experiments import market1501_tpu
from jreid import files
from jreid import jobs
from jreid import stages
from jreid import validation
from jreid.data import synthetic
import test_eval_features


@contextlib.contextmanager
def fake_gcs(root):
  """gs://... resolves to ``root/...`` for every epath call (the layer orbax/TFDS use too)."""
  local = lambda p: os.fspath(p).replace("gs://", f"{root}/", 1)
  one = lambda fn, p, *a, **k: fn(local(p), *a, **k)
  two = lambda fn, p, q, *a, **k: fn(local(p), local(q), *a, **k)
  with mock.patch.object(gpath, "_is_tf_installed", lambda: False), epath_testing.mock_epath(
      exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, open=one, remove=one,
      rmtree=one, stat=one, glob=one, walk=one, rename=two, replace=two, copy=two):
    yield


def test_features_job_reads_and_writes_gs_paths(tmp_path):
  local_root = tmp_path / "gcs"
  bucket = local_root / "bucket"
  bucket.mkdir(parents=True)
  train_dir, arrays = test_eval_features.make_case(bucket, seed=4)
  np.savez(bucket / "features.npz", **arrays)
  config = test_eval_features._config("gs://bucket/features.npz", "gs://bucket/bounding_box_train")
  config.rerank.enabled = False
  with fake_gcs(local_root):
    remote = jobs.run(config, "gs://bucket/work")
    assert files.exists("gs://bucket/work/results.json")
  assert json.loads((bucket / "work" / "results.json").read_text()) == dict(
      remote, run=stages.run_info(config))
  for f in ("cmc.png", "cmc.json", "st_model.npz", "st_distributions.png"):
    assert (bucket / "work" / f).stat().st_size > 0
  config.features, config.train_dir = str(bucket / "features.npz"), str(train_dir)
  assert jobs.run(config, str(tmp_path / "local_work")) == remote


def test_synthetic_world_can_be_written_to_gs(tmp_path):
  params = synthetic.WorldParams(num_train_ids=3, num_test_ids=3, num_cameras=2,
                                 image_height=16, image_width=8, num_junk=1,
                                 num_distractors=1, group_size=2, time_span=50_000)
  with fake_gcs(tmp_path):
    manifest = synthetic.generate("gs://bucket/world", params, make_zip=True)
    assert epath.Path("gs://bucket/world/manifest.json").exists()
  root = tmp_path / "bucket" / "world" / synthetic.ROOT_NAME
  assert sum(len(os.listdir(root / f)) for f in synthetic.FOLDERS.values()) == len(
      manifest.filenames)


def test_tpu_and_gpu_configs_validate_and_scale_learning_rate():
  tpu = market1501_tpu.get_config()
  assert tpu.optimizer.lr == pytest.approx(0.01 * 256 / 32)
  assert tpu.model.dtype == "bfloat16" and tpu.optimizer.warmup_epochs == 5
  validation.validate(tpu, device_count=32, process_count=4)   # a v4-64 pod slice
  validation.validate(tpu, device_count=8, process_count=1)    # a v4-8 / v5e-8 VM
  with pytest.raises(ValueError, match="train.batch_size=256: expected a multiple of the 6 devices"):
    validation.validate(tpu, device_count=6, process_count=1)
  gpu = market1501_gpu.get_config()
  assert gpu.optimizer.lr == pytest.approx(0.01 * 128 / 32)
  validation.validate(gpu, device_count=4, process_count=1)
  gpu.data.shards = 3
  with pytest.raises(ValueError, match="data.shards=3"):
    validation.validate(gpu, device_count=4, process_count=2)
