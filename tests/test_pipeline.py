"""The whole job from main.py on a tiny synthetic world, and its stage reuse."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(workdir, *flags, env=None, timeout=600, returncode=0):
  proc = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}",
                         "--config=experiments/tiny.py", *flags], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)
  assert proc.returncode == returncode, proc.stderr[-4000:]
  return proc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tiny_run")
  proc = _main(workdir)
  return workdir, proc


def test_main_job_writes_results_and_pictures(tiny_run):
  workdir, proc = tiny_run
  results = json.loads((workdir / "results.json").read_text())
  assert set(results) == {"visual", "st", "visual_rerank", "st_rerank", "run"}
  run = results.pop("run")
  assert run["job"] == "train_and_evaluate" and len(run["config_digest"]) == 40
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
  if head.returncode == 0:
    assert run["jreid_commit"].split("+")[0] == head.stdout.strip()
  for r in results.values():
    assert set(r) >= {"rank1", "rank5", "rank10", "mAP"}
    assert 0.0 <= r["mAP"] <= 1.0 and 0.0 <= r["rank1"] <= 1.0
  for f in ("cmc.png", "cmc.json", "st_distributions.png", "ranked_lists.png", "st_model.npz",
            "features.npz"):
    assert (workdir / f).stat().st_size > 0, f
  assert os.listdir(workdir / "tensorboard")
  assert "steps/s" in proc.stderr and "ETA" in proc.stderr
  assert "\x1b[" not in proc.stderr and "\r" not in proc.stderr  # no progress-bar escapes
  shown = [l for l in proc.stderr.splitlines() if "changed from the defaults:" in l]
  assert len(shown) == 1 and "data.dataset='synthetic'" in shown[0]
  assert "model.depth=0" in shown[0] and "st.sigma" not in shown[0]
  assert "rank-1" in proc.stdout
  # The features file is the evaluate-from-features format: one row per image.
  f = np.load(workdir / "features.npz")
  manifest = json.loads((workdir / "synthetic_world" / "manifest.json").read_text())
  assert len(f["query_label"]) == manifest["split"].count("query")
  assert len(f["gallery_label"]) == manifest["split"].count("gallery")
  np.testing.assert_allclose(np.linalg.norm(f["gallery_f"], axis=1), 1.0, rtol=1e-5)


def _products(workdir):
  """What the stages wrote: modification times of the products, the checkpoint steps."""
  times = {f: os.stat(workdir / f).st_mtime_ns
           for f in ("features.npz", "st_model.npz", "stages/train.json", "stages/extract.json")}
  return times, sorted(int(s) for s in os.listdir(workdir / "checkpoints"))


def test_second_run_reuses_every_stage(tiny_run, tmp_path):
  workdir, _ = tiny_run
  before = json.loads((workdir / "results.json").read_text())
  products, steps = _products(workdir)
  digest = json.loads((workdir / "stages" / "train.json").read_text())["digest"]
  _main(workdir)
  # Nothing retrained, re-extracted or refitted; the same results.
  assert _products(workdir) == (products, steps)
  assert json.loads((workdir / "results.json").read_text()) == before
  # More epochs: training continues from the last checkpoint (step 16 = 2 epochs x 8
  # steps) to step 24, and features are extracted again; the ST model stays.
  _main(workdir, "--config.train.epochs=3")
  more, more_steps = _products(workdir)
  assert more_steps[-1] == 24 and 16 in steps and steps[-1] == 16
  assert json.loads((workdir / "stages" / "extract.json").read_text())["step"] == 24
  assert more["features.npz"] != products["features.npz"]
  assert more["st_model.npz"] == products["st_model.npz"]
  assert json.loads((workdir / "stages" / "train.json").read_text())["digest"] == digest
  # Settings that shape the model: the old checkpoints are not reused, and nothing of
  # the workdir is overwritten.
  after = json.loads((workdir / "results.json").read_text())
  other = _main(workdir, "--config.optimizer.lr=0.5", returncode=1)
  lines = [l for l in other.stderr.splitlines() if l.startswith("error:")]
  assert lines == ["error: this workdir was trained with other settings (changed: "
                   "optimizer.lr): use a new workdir or --config.overwrite=True"]
  assert "Traceback" not in other.stderr
  assert json.loads((workdir / "results.json").read_text()) == after
  assert _products(workdir) == (more, more_steps)


@pytest.mark.parametrize("flag, message", [
    ("--config.foo=1", "error: unknown config field 'foo' (in --config.foo=1): config has "
     "the fields augment, checkpoint,"),
    ("--config.model.depht=34", "error: unknown config field 'model.depht' (in "
     "--config.model.depht=34): model has the fields backbone, bottleneck, conv, depth, dropout,"),
])
def test_unknown_config_field_is_one_line(tmp_path, flag, message):
  proc = _main(tmp_path, flag, returncode=2)
  assert proc.stderr.startswith(message), proc.stderr[-2000:]
  assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_setting_stops_before_anything_is_written(tmp_path):
  proc = _main(tmp_path / "w", "--config.eval.max_rank=0", returncode=1)
  assert "error: config: eval.max_rank=0: expected a whole number >= 1" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_features_file_of_the_pipeline_evaluates_the_same(tiny_run, tmp_path):
  workdir, _ = tiny_run
  train_dir = workdir / "synthetic_world" / "Market-1501-v15.09.15" / "bounding_box_train"
  out = tmp_path / "eval"
  proc = subprocess.run(
      [sys.executable, "main.py", f"--workdir={out}", "--config=experiments/eval_features.py",
       f"--config.features={workdir / 'features.npz'}", f"--config.train_dir={train_dir}",
       "--config.num_parts=2", "--config.st.num_bins=3000"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  a = json.loads((workdir / "results.json").read_text())
  b = json.loads((out / "results.json").read_text())
  assert (a.pop("run")["job"], b.pop("run")["job"]) == ("train_and_evaluate", "evaluate_features")
  for kind in a:
    assert a[kind]["mAP"] == pytest.approx(b[kind]["mAP"], abs=1e-6)


def test_two_processes_equal_one_process_with_two_devices(tmp_path):
  """2 processes (jax.distributed on CPU, 1 device each) == 1 process with 2 devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  single = tmp_path / "single"
  _main(single, "--config.data.shards=2", "--config.train.epochs=1", "--config.rerank.enabled=False",
        env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  multi = tmp_path / "multi"
  port = 20000 + os.getpid() % 20000
  procs = [subprocess.Popen(
      [sys.executable, "main.py", f"--workdir={multi}", "--config=experiments/tiny.py",
       "--config.data.shards=2", "--config.train.epochs=1", "--config.rerank.enabled=False",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  assert "2 devices (2 processes)" in outs[0][1]
  # Results and tables are written by process 0 only.
  assert "rank-1" in outs[0][0] and "rank-1" not in outs[1][0]
  assert "steps/s" in outs[0][1] and "steps/s" not in outs[1][1]
  a, b = np.load(single / "features.npz"), np.load(multi / "features.npz")
  assert a.files == b.files
  for k in a.files:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # Same config, same digests.
  for stage in ("train", "extract", "fit_st"):
    assert (json.loads((single / "stages" / f"{stage}.json").read_text())["digest"]
            == json.loads((multi / "stages" / f"{stage}.json").read_text())["digest"])
  ra = json.loads((single / "results.json").read_text())
  rb = json.loads((multi / "results.json").read_text())
  assert ra.pop("run") == rb.pop("run")  # same config, same commit
  for kind in ra:
    assert ra[kind]["mAP"] == pytest.approx(rb[kind]["mAP"], abs=1e-6)
