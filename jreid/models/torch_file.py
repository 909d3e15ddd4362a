"""PyTorch checkpoint files (``torch.save``) read without torch, and without running them.

Reads both formats ``torch.save`` writes: the zip archive (PyTorch >= 1.6:
``<name>/data.pkl`` plus one ``<name>/data/<key>`` entry per storage) and the
legacy format (pickles one after another: magic number, protocol, system info,
the object, the storage keys, then each storage as an int64 element count and
its raw bytes). The object is unpickled by a restricted unpickler that knows
only what a state dict holds: ``collections.OrderedDict``, torch's typed storages
and its tensor and parameter rebuild functions, all mapped to numpy here. Any
other global (a module, a class, ``os.system`` in a ``__reduce__`` payload) is
refused before it is looked up, with an error naming the file and the global,
so nothing in the file runs; the BUILD opcode (setting an object's state) is
accepted only on an OrderedDict (torch's ``_metadata``, dropped), so a file cannot
change the unpickler's own objects either. It is Python's pure-Python unpickler
(``pickle._Unpickler``), whose opcode table can be restricted so; a state dict's
pickle is small (its tensors' bytes are read separately).
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001

# torch's typed storage classes (as pickled by torch.save) -> element dtype.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeFileError(ValueError):
  """A pickle asked for a global that a state dict never needs."""


class _StorageType:
  __slots__ = ("name", "dtype")

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Storage:
  """One storage: its dtype and numel; ``data`` is filled once its bytes are read."""
  __slots__ = ("key", "dtype", "numel", "data", "base", "base_offset")

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel, self.data = key, dtype, numel, None
    self.base, self.base_offset = None, 0


class _Tensor:
  """A tensor waiting for its storage's bytes (legacy files store them after the object)."""
  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(self.size) != len(self.stride):
      raise pickle.UnpicklingError(f"a tensor of shape {self.size} with strides {self.stride}")

  def array(self, path: str) -> np.ndarray:
    data = self.storage.data
    if data is None or len(data) != self.storage.numel:
      raise ValueError(f"{path!r}: storage {self.storage.key!r} holds "
                       f"{0 if data is None else len(data)} of its {self.storage.numel} "
                       f"elements: the file is truncated or damaged")
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)
                             if n > 0)
    if any(n == 0 for n in self.size):
      return np.zeros(self.size, self.storage.dtype)
    if math.prod(self.size) > len(data):  # a state dict's tensors never outgrow storage
      raise ValueError(f"{path!r}: a tensor of shape {self.size} has more elements than its "
                       f"storage {self.storage.key!r} ({len(data)}): refused")
    if self.offset < 0 or last >= len(data) or min(self.stride, default=0) < 0:
      raise ValueError(f"{path!r}: a tensor of shape {self.size} (offset {self.offset}, "
                       f"stride {self.stride}) reaches past its storage "
                       f"{self.storage.key!r} of {len(data)} elements")
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], self.size, tuple(s * itemsize for s in self.stride))
    return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride, ...) -> tensor."""
  del unused  # requires_grad, backward hooks, metadata: nothing numpy keeps
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError("a tensor rebuilt from something other than a storage")
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
  """torch._utils._rebuild_parameter(data, requires_grad, hooks) -> its tensor."""
  del unused
  return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Unpickles a state dict: only the globals of ``_GLOBALS`` and torch's storage types;
  storages by persistent id; BUILD only on OrderedDicts."""
  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file, path: str, storages: dict[str, _Storage]):
    super().__init__(file)
    self.path, self.storages = path, storages

  def load_build(self):
    state = self.stack.pop()
    if type(self.stack[-1]) is not collections.OrderedDict:  # pylint: disable=unidiomatic-typecheck
      raise UnsafeFileError(f"{self.path!r} sets the state of a "
                            f"{type(self.stack[-1]).__name__}: refused (a state dict sets none "
                            f"but an OrderedDict's metadata)")
    del state  # torch's _metadata (module versions): nothing numpy keeps
  dispatch[pickle.BUILD[0]] = load_build

  def find_class(self, module: str, name: str):
    if (module, name) in _GLOBALS:
      return _GLOBALS[module, name]
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)  # a fresh one: nothing is shared between loads
    raise UnsafeFileError(
        f"{self.path!r} asks for the global {module}.{name}, which a state dict of "
        f"tensors never needs: refused, and nothing in the file was run (allowed: tensors, "
        f"storages, OrderedDict and plain containers; save model.state_dict(), not the "
        f"model)")

  def persistent_load(self, pid):
    # zip: ('storage', type, key, location, numel); legacy: the same + view metadata.
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
    kind, key, numel = pid[1], str(pid[2]), int(pid[4])
    if key not in self.storages:
      self.storages[key] = _Storage(key, kind.dtype, numel)
    storage = self.storages[key]
    if len(pid) == 6 and pid[5] is not None:  # a view into the storage (legacy files)
      view_key, offset, view_size = pid[5]
      view = _Storage(str(view_key), kind.dtype, int(view_size))
      view.base, view.base_offset = storage, int(offset)  # filled with the base's bytes
      self.storages.setdefault(f"view:{view_key}", view)
      return self.storages[f"view:{view_key}"]
    return storage


def _materialise(obj, path: str):
  """Replaces every pending tensor in ``obj`` (dicts, lists, tuples) by its numpy array."""
  if isinstance(obj, _Tensor):
    return obj.array(path)
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _materialise(v, path)) for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _materialise(v, path) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v, path) for v in obj)
  return obj


def _load_zip(path: str, archive: zipfile.ZipFile):
  pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
  if len(pickles) != 1:
    raise ValueError(f"{path!r}: a torch zip file holds one data.pkl, found {len(pickles)}")
  prefix = pickles[0][:-len("data.pkl")]
  byteorder = f"{prefix}byteorder"
  if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
    raise ValueError(f"{path!r}: big-endian tensors are not supported")
  storages: dict[str, _Storage] = {}
  obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), path, storages).load()
  for key, storage in storages.items():
    entry = f"{prefix}data/{key}"
    try:
      size = archive.getinfo(entry).file_size
    except KeyError:
      raise ValueError(f"{path!r}: storage {key!r} ({entry}) is missing: the file is "
                       f"truncated or damaged") from None
    if size != storage.numel * storage.dtype.itemsize:
      raise ValueError(f"{path!r}: storage {key!r} ({entry}) holds {size} bytes, expected "
                       f"{storage.numel} x {storage.dtype.itemsize}: the file is damaged")
    storage.data = np.frombuffer(archive.read(entry), storage.dtype)
  return obj


def _load_legacy(path: str, f):
  try:
    magic = _Unpickler(f, path, {}).load()
  except UnsafeFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path!r}: not a torch.save file (neither a zip archive nor the legacy "
                     f"format: {type(e).__name__})") from None
  if magic != LEGACY_MAGIC:
    raise ValueError(f"{path!r}: not a torch.save file (its first pickle is not torch's "
                     f"magic number)")
  protocol = _Unpickler(f, path, {}).load()
  if protocol != LEGACY_PROTOCOL:
    raise ValueError(f"{path!r}: legacy torch protocol {protocol!r}, expected "
                     f"{LEGACY_PROTOCOL}")
  info = _Unpickler(f, path, {}).load()
  if isinstance(info, dict) and not info.get("little_endian", True):
    raise ValueError(f"{path!r}: big-endian tensors are not supported")
  storages: dict[str, _Storage] = {}
  obj = _Unpickler(f, path, storages).load()
  keys = _Unpickler(f, path, {}).load()
  for key in keys:
    storage = storages.get(str(key))
    if storage is None:
      raise ValueError(f"{path!r}: storage {key!r} is listed but no tensor uses it")
    head = f.read(8)
    if len(head) != 8:
      raise ValueError(f"{path!r}: storage {key!r} is missing: the file is truncated")
    (numel,) = struct.unpack("<q", head)
    if numel != storage.numel:
      raise ValueError(f"{path!r}: storage {key!r} says {numel} elements, its tensors "
                       f"{storage.numel}: the file is damaged")
    raw = f.read(numel * storage.dtype.itemsize)
    if len(raw) != numel * storage.dtype.itemsize:
      raise ValueError(f"{path!r}: storage {key!r} holds {len(raw) // storage.dtype.itemsize} "
                       f"of its {storage.numel} elements: the file is truncated or damaged")
    storage.data = np.frombuffer(raw, storage.dtype)
  for storage in storages.values():
    if storage.base is not None and storage.base.data is not None:
      storage.data = storage.base.data[storage.base_offset:storage.base_offset + storage.numel]
  return obj


def load(path: str):
  """A ``torch.save`` file -> its object, tensors as numpy arrays (torch's dtypes and shapes).

  Raises:
    UnsafeFileError: the pickle asks for a global outside tensors, storages and
      OrderedDict (named in the message); nothing was run.
    ValueError: not a torch file, truncated or damaged (naming the file and the part).
  """
  with open(path, "rb") as f:
    head = f.read(4)
    f.seek(0)
    try:
      if head.startswith(b"PK"):
        try:
          archive = zipfile.ZipFile(f)
        except zipfile.BadZipFile as e:
          raise ValueError(f"{path!r}: a damaged or truncated torch zip file ({e})") from None
        with archive:
          obj = _load_zip(path, archive)
      else:
        obj = _load_legacy(path, f)
    except UnsafeFileError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (damage raises many types)
      if isinstance(e, ValueError) and repr(path) in str(e):
        raise  # already names the file and the part
      raise ValueError(f"{path!r}: truncated or damaged torch file ({type(e).__name__}: "
                       f"{e})") from None
  return _materialise(obj, path)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A ``.pt``/``.pth`` state dict (or {"state_dict": ...} / {"model": ...}) -> {name: array}."""
  obj = load(path)
  for key in ("state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise ValueError(f"{path!r} holds a {type(obj).__name__}, expected a state dict "
                     f"(name -> tensor)")
  tensors = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
  others = sorted(str(k) for k in obj if k not in tensors)
  if others:
    raise ValueError(f"{path!r}: {len(others)} entries are not tensors: {others[:3]}")
  return tensors
