"""Models, training, ST and evaluation import without TensorFlow (GPU hosts lack it)."""

import subprocess
import sys


def test_core_modules_do_not_import_tensorflow():
  code = ("import sys; import jreid.pipeline, jreid.train, jreid.features, jreid.rerank, "
          "jreid.models.heads, jreid.models.convert, jreid.data.synthetic, "
          "experiments.synthetic, experiments.market1501_tpu; "
          "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')]; "
          "assert not bad, bad")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=__file__.rsplit("/tests/", 1)[0])
  assert proc.returncode == 0, proc.stderr[-2000:]
