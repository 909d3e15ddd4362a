"""torch.save files read without torch: real files of both formats, refusals, damage.

The fixtures ``tests/fixtures/torch_state_*`` were written by real ``torch.save``
(PyTorch 2.13, ``tests/torch_oracle.py save``); ``torch_state_expected.npz`` holds
the same tensors as numpy wrote them. When a PyTorch venv is at hand
(``$JREID_TORCH_PYTHON``, else ``~/.cache/jreid/torch_venv``) the files are also
written afresh by it and read back.
"""

import collections
import os
import pickle
import subprocess
import zipfile

import ml_dtypes
import numpy as np
import pytest

from jreid.models import convert
from jreid.models import torch_file

import torch_oracle  # pylint: disable=g-import-not-at-top,wrong-import-order  (tests/, no torch)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
TORCH_PYTHON = torch_oracle.TORCH_PYTHON
needs_torch = pytest.mark.skipif(
    not os.path.exists(TORCH_PYTHON),
    reason=f"no PyTorch venv at {TORCH_PYTHON} (set JREID_TORCH_PYTHON; the committed "
           f"fixtures are tested without it)")


def _check_against_expected(folder):
  expected = np.load(os.path.join(folder, "torch_state_expected.npz"))
  for fmt in ("zip", "legacy"):
    state = torch_file.load(os.path.join(folder, f"torch_state_{fmt}.pt"))
    assert isinstance(state, collections.OrderedDict)
    assert list(state)[:7] == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                               "1.running_var", "1.num_batches_tracked"]  # a module's own
    assert list(state) == list(expected)  # the saved order
    dtypes = {"half": np.float16, "bf16": ml_dtypes.bfloat16, "steps": np.int64,
              "mask": np.bool_, "1.num_batches_tracked": np.int64}
    for name in expected:
      got = state[name]
      assert got.dtype == dtypes.get(name, np.float32), (fmt, name)
      assert got.shape == expected[name].shape, (fmt, name)
      np.testing.assert_array_equal(got.astype(expected[name].dtype), expected[name])
    assert state["steps"] == 12345678901
    # The transposed view and the slice are copies: writable, their own memory.
    assert state["transposed"].flags.writeable and state["slice"].flags.c_contiguous


def test_real_torch_save_files_of_both_formats_load_exactly():
  _check_against_expected(FIXTURES)


@needs_torch
def test_files_written_now_by_torch_load_exactly(tmp_path):
  subprocess.run([TORCH_PYTHON, os.path.join(HERE, "torch_oracle.py"), "save", str(tmp_path)],
                 check=True, capture_output=True)
  _check_against_expected(str(tmp_path))


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
  marker = tmp_path / "ran"
  payload = pickle.dumps(collections.OrderedDict(w=_RunsCode(marker)), protocol=2)
  legacy = tmp_path / "evil_legacy.pt"
  legacy.write_bytes(payload)
  archive = tmp_path / "evil_zip.pt"
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("evil/data.pkl", payload)
    z.writestr("evil/version", "3\n")
  for path in (legacy, archive):
    with pytest.raises(torch_file.UnsafeFileError) as e:
      torch_file.load(str(path))
    assert str(path) in str(e.value) and f"global {os.system.__module__}.system" in str(e.value)
  assert not marker.exists()
  # Setting the state of anything but an OrderedDict (here: of a storage type, which would
  # change how every later file reads its floats): refused.
  tamper = tmp_path / "tamper.pt"
  tamper.write_bytes(b"\x80\x02ctorch\nFloatStorage\nq\x00}q\x01X\x05\x00\x00\x00dtypeq\x02"
                     b"X\x05\x00\x00\x00int32q\x03sb.")
  with pytest.raises(torch_file.UnsafeFileError, match=r"sets the state of a _StorageType"):
    torch_file.load(str(tamper))
  _check_against_expected(FIXTURES)  # and later loads read as before
  # A whole module saved (torch.save(model)): refused, naming its class.
  module = tmp_path / "model.pt"
  module.write_bytes(b"\x80\x02ctorch.nn.modules.conv\nConv2d\nq\x00)\x81q\x01.")
  with pytest.raises(torch_file.UnsafeFileError, match=r"torch\.nn\.modules\.conv\.Conv2d"):
    torch_file.load(str(module))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_or_foreign_files_get_clear_errors(tmp_path, fmt):
  data = open(os.path.join(FIXTURES, f"torch_state_{fmt}.pt"), "rb").read()
  for cut in (len(data) // 2, len(data) - 10):
    path = tmp_path / f"cut{cut}.pt"
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=str(path).replace(".", r"\.") + r".*(truncated|damaged)"):
      torch_file.load(str(path))
  other = tmp_path / "notes.pt"
  other.write_bytes(b"hello, not a checkpoint")
  with pytest.raises(ValueError, match="not a torch.save file"):
    torch_file.load(str(other))


def test_state_dict_entries_that_are_not_tensors_are_named(tmp_path):
  path = tmp_path / "mixed.pt"
  with zipfile.ZipFile(path, "w") as z:  # torch's zip layout around a plain pickle
    z.writestr("mixed/data.pkl", pickle.dumps(collections.OrderedDict(epoch=3), protocol=2))
  assert torch_file.load(str(path)) == {"epoch": 3}
  with pytest.raises(ValueError, match=r"1 entries are not tensors: \['epoch'\]"):
    torch_file.read_state_dict(str(path))
  with pytest.raises(ValueError, match=r"expected a state dict file: \.pth, \.pt"):
    convert.read_state_dict(str(tmp_path / "weights.h5"))
