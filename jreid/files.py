"""File access for local paths and cloud URIs (``gs://...``) alike, through etils.epath.

The workdir, the TFDS data dir, the manual dir, features files and training
folders may all be ``gs://`` URIs on Cloud TPU; orbax and TFDS already use the
same layer. Writes are atomic where the file system allows (write then rename).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

from etils import epath
import numpy as np

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
  return epath.Path(p)


def is_remote(p: PathLike) -> bool:
  return "://" in os.fspath(p)


def join(p: PathLike, *parts: str) -> str:
  return os.fspath(epath.Path(p).joinpath(*parts))


def exists(p: PathLike) -> bool:
  return epath.Path(p).exists()


def isdir(p: PathLike) -> bool:
  return epath.Path(p).is_dir()


def isfile(p: PathLike) -> bool:
  return epath.Path(p).is_file()


def makedirs(p: PathLike) -> None:
  epath.Path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> list[str]:
  if not is_remote(p):  # a Path object per entry took ~0.5 s for Market's 12,936 names
    return sorted(n for n in os.listdir(p) if not n.endswith("~"))  # as etils lists
  return sorted(child.name for child in epath.Path(p).iterdir())


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes ``data`` to ``p`` via a temporary file and a rename."""
  target = epath.Path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / (target.name + ".tmp")
  tmp.write_bytes(data)
  tmp.replace(target)


def read_bytes(p: PathLike) -> bytes:
  return epath.Path(p).read_bytes()


def write_json(p: PathLike, obj: Any, indent: int | None = 2) -> None:
  """Standard JSON only: a NaN or infinity raises ValueError (strict parsers reject them)."""
  write_bytes(p, json.dumps(obj, indent=indent, allow_nan=False).encode())


def read_json(p: PathLike) -> Any:
  return json.loads(read_bytes(p))


def save_npz(p: PathLike, **arrays: np.ndarray) -> None:
  """np.savez to a local path (directly) or a URI (through memory)."""
  if is_remote(p):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(p, buffer.getvalue())
    return
  os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
  tmp = os.fspath(p) + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, p)


def aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
  """np.empty with the data 64-byte aligned: jax.device_put on CPU then aliases it
  instead of copying (a 500k x 2048 gallery is 4 GB: one copy, not two)."""
  nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
  raw = np.empty(nbytes + alignment, np.uint8)
  offset = (-raw.ctypes.data) % alignment
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def load_npz(p: PathLike) -> dict[str, np.ndarray]:
  """All arrays of an .npz file (local or URI) as a dict, each read straight into an
  aligned buffer (no intermediate copy)."""
  source = io.BytesIO(read_bytes(p)) if is_remote(p) else os.fspath(p)
  out = {}
  with zipfile.ZipFile(source) as z:
    for member in z.namelist():
      if not member.endswith(".npy"):
        continue
      with z.open(member) as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
          raise ValueError(f"{os.fspath(p)!r}: {member} holds Python objects; expected "
                           f"numeric or string arrays")
        array = aligned_empty(shape[::-1] if fortran else shape, dtype)
        view = memoryview(array.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):  # in 64 MB pieces: zip members read whole would copy
          n = f.readinto(view[got:got + (1 << 26)])
          if not n:
            raise ValueError(f"{os.fspath(p)!r}: {member} is truncated")
          got += n
        out[member[:-4]] = array.T if fortran else array
  return out
