"""The parity benchmarks' run-time patches and their side-by-side table.

The patches are checked against the reference snapshots at ``../shared/reference``
when they are there (skipped, saying so, in a clone without them): each must match
its file exactly once, and every patched file must still be valid Python. The
benchmarks themselves train on the real dataset and are run by hand
(``docs/market1501.md``).
"""

import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import reference_parity  # pylint: disable=g-import-not-at-top,wrong-import-position
import strong_parity  # pylint: disable=g-import-not-at-top,wrong-import-position

REFERENCE = os.path.join(os.path.dirname(ROOT), "shared", "reference")
ST_REID = os.path.join(REFERENCE, "Spatial-Temporal-Re-identification")
STRONG = os.path.join(REFERENCE, "reid-strong-baseline")

needs_reference = pytest.mark.skipif(
    not (os.path.isdir(ST_REID) and os.path.isdir(STRONG)),
    reason=f"the reference snapshots are not at {REFERENCE}")


def _parses(folder, names):
  for name in names:
    with open(os.path.join(folder, name)) as f:
      ast.parse(f.read(), filename=name)


@needs_reference
def test_pcb_patches_apply_once_and_keep_python_valid(tmp_path):
  fmt = dict(market_root="/data/Market-1501-v15.09.15", depth=18, width=32, height=96,
             width_px=48, epochs=4, decay_epoch=3, seed=1, workers=2)
  reference_parity.patched_copy(ST_REID, str(tmp_path), fmt)
  patched = sorted({f for f, _, _, _ in reference_parity.PATCHES})
  _parses(tmp_path, patched + ["jreid_patch.py", "sitecustomize.py"])
  train = (tmp_path / "train_market.py").read_text()
  assert "num_epochs=jreid_patch.EPOCHS)" in train and "num_epochs=60)" not in train
  assert "step_size=jreid_patch.DECAY_EPOCH + 1" in train
  assert 'download_path = "/data/Market-1501-v15.09.15"' in (tmp_path / "prepare.py").read_text()
  patch = (tmp_path / "jreid_patch.py").read_text()
  assert "DEPTH, WIDTH, SIZE = 18, 32, (96, 48)" in patch
  assert "EPOCHS, DECAY_EPOCH, SEED, WORKERS = 4, 3, 1, 2" in patch
  # The reference's own files are left as they are.
  assert "num_epochs=60)" in open(os.path.join(ST_REID, "train_market.py")).read()


@needs_reference
def test_strong_patches_apply_once_and_keep_python_valid(tmp_path):
  out = tmp_path / "copy"
  strong_parity.patched_copy(STRONG, str(out), dict(width=32, seed=0, stem_relu=True))
  patched = sorted({f for f, _, _, _ in strong_parity.PATCHES})
  _parses(out, patched + ["jreid_patch.py", "jreid_extract.py", "sitecustomize.py"])
  assert "jreid_patch.HalfResNet" in (out / "modeling" / "baseline.py").read_text()


def test_a_patch_that_does_not_match_once_stops(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "a.py").write_text("x = 1\nx = 1\n")
  with pytest.raises(SystemExit, match=r"patch of a.py \(why\) matches 2 times, not once"):
    reference_parity.apply_patches(str(src), str(tmp_path), [("a.py", "why", "x = 1", "y")],
                                   "snap")
  with pytest.raises(SystemExit, match="matches 0 times"):
    reference_parity.apply_patches(str(src), str(tmp_path), [("a.py", "why", "z", "y")], "snap")


def test_workdirs_inside_the_repository_are_refused(tmp_path):
  with pytest.raises(SystemExit, match="lies inside the repository"):
    reference_parity.refuse_inside_repository(os.path.join(ROOT, "workdirs", "parity"))
  reference_parity.refuse_inside_repository(str(tmp_path))


def test_table_means_and_differences():
  def run(v1, vm, s1, sm, epoch_s):
    return dict(results={"visual": {"rank1": v1, "mAP": vm}, "st": {"rank1": s1, "mAP": sm}},
                epoch_s=epoch_s)
  runs = {"reference": {0: run(0.40, 0.20, 0.70, 0.50, 60.0), 1: run(0.36, 0.18, 0.72, 0.46, 80.0)},
          "jreid": {0: run(0.41, 0.21, 0.75, 0.50, 90.0), 1: run(0.39, 0.23, 0.73, 0.52, 100.0)}}
  lines = reference_parity.table(runs).splitlines()
  rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[2:]}
  assert rows[("reference", "mean")] == ["38.00", "19.00", "71.00", "48.00", "70.0"]
  assert rows[("jreid", "mean")] == ["40.00", "22.00", "74.00", "51.00", "95.0"]
  assert lines[-1].split()[-5:] == ["+2.00", "+3.00", "+3.00", "+3.00", "x1.36"]
