"""The one reuse rule of a workdir's products: stage stamps.

A stage writes its products, then its stamp ``<workdir>/stages/<stage>.json``: the
digest of the inputs that shape the products (``digest_of``), the stage's version
and when it was written. A product is reused only when its stage's stamp holds the
digest of the inputs now and every product file exists (``is_current``); otherwise
the stage runs again. A stage cut short has written no stamp, so it is redone.

``VERSIONS`` numbers each stage's meaning: a stage's version goes up when the same
settings come to give other products, and the version enters the stage's digest,
so stamps of another version are never current. A stage at version 1 has the digest
of its inputs alone.

Only this module reads and writes stamps; ``jreid.stages`` decides what each
stage's inputs are.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np

from jreid import files
from jreid import sharding

STAMPS_DIR = "stages"
# Stages whose version is above 1. train 2: P x K batches are the strong baseline's
# identity passes (``jreid.data.pipeline.identity_pass``).
VERSIONS = {"train": 2}


def version(stage: str) -> int:
  """This jreid's version of ``stage`` (1 unless ``VERSIONS`` says otherwise)."""
  return VERSIONS.get(stage, 1)


def digest(inputs: Any) -> str:
  """A stable digest of JSON-able inputs (numpy arrays by their bytes and dtype,
  ConfigDicts as dicts, anything else by its ``str``)."""
  def encode(x):
    if isinstance(x, np.ndarray):
      return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() + str(x.dtype)
    if hasattr(x, "to_dict"):
      return x.to_dict()
    return str(x)
  return hashlib.sha1(json.dumps(inputs, sort_keys=True, default=encode).encode()).hexdigest()


def digest_of(stage: str, inputs: dict) -> str:
  """The digest of a stage's inputs and its version."""
  v = version(stage)
  return digest(inputs if v == 1 else dict(inputs, stage_version=v))


def path(workdir: str, stage: str) -> str:
  return files.join(workdir, STAMPS_DIR, f"{stage}.json")


def read(workdir: str, stage: str) -> dict | None:
  """The stage's stamp, None when it has none."""
  p = path(workdir, stage)
  return files.read_json(p) if files.exists(p) else None


def stamp_version(stamp: dict) -> int:
  """The version of the stage that wrote ``stamp`` (stamps without one: 1)."""
  return int(stamp.get("version", 1))


def is_current(workdir: str, stage: str, wanted: str, *products: str) -> bool:
  """True when every product exists and the stage's stamp has the digest ``wanted``."""
  stamp = read(workdir, stage)
  return (stamp is not None and stamp.get("digest") == wanted
          and all(files.exists(files.join(workdir, p)) for p in products))


def write(workdir: str, stage: str, wanted: str, **info) -> None:
  """Records (main process) that the stage's products now come from inputs with
  digest ``wanted``; ``info`` is kept beside it."""
  if sharding.is_main_process():
    files.write_json(path(workdir, stage),
                     dict(digest=wanted, version=version(stage),
                          written=time.strftime("%Y-%m-%d %H:%M:%S"), **info))
