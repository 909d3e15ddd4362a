"""The bookkeeping of a workdir's products: stage stamps (the one reuse rule), the
workdir's job, and the retirement of an earlier run's products.

A stage's stamp ``<workdir>/stages/<stage>.json`` holds the digest of the inputs
that shape its products (``digest_of``), the stage's version, the digest of each
product file's content, and when it was written. A product is reused only when its
stage's stamp holds the digest of the inputs now and every product file still has
the content the stamp recorded (``is_current``); otherwise the stage runs again.
Stages write the stamp after their products (``jreid.stages`` names the one
exception, training, whose checkpoints complete one by one), so a stage cut short is
redone.

A workdir belongs to one job (``claim``: ``stages/job.json``): no other job writes
into it or reuses its products (the export job adds ``export/`` to a training
workdir; jobs read other workdirs' products only as their inputs). ``retire``
removes what an earlier run wrote and this run writes anew. ``commit`` names the
jreid that wrote a results file.

``VERSIONS`` numbers each stage's meaning: a stage's version goes up when the same
settings come to give other products, and the version enters the stage's digest,
so stamps of another version are never current. A stage at version 1 has the digest
of its inputs alone.

Only this module reads and writes stamps; ``jreid.stages`` decides what each
stage's inputs are.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import time
from typing import Any

from absl import logging
import numpy as np

from jreid import errors
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


def content_digest(p: str) -> str:
  """sha1 of a file's bytes."""
  h = hashlib.sha1()
  with files.path(p).open("rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      h.update(block)
  return h.hexdigest()


def is_current(workdir: str, stage: str, wanted: str, *products: str) -> bool:
  """True when the stage's stamp has the digest ``wanted`` and every product (a file
  name in the workdir) exists with the content the stamp recorded."""
  stamp = read(workdir, stage)
  if stamp is None or stamp.get("digest") != wanted:
    return False
  recorded = stamp.get("products", {})
  for p in products:
    full = files.join(workdir, p)
    if p not in recorded or not files.exists(full) or content_digest(full) != recorded[p]:
      return False
  return True


def write(workdir: str, stage: str, wanted: str, products: tuple[str, ...] = (),
          **info) -> None:
  """Records (main process) that the stage's ``products`` (file names in the workdir,
  written already) now come from inputs with digest ``wanted``, with each file's
  content digest and the job that owns the workdir (``claim``; None before any claim);
  ``info`` is kept beside them."""
  if sharding.is_main_process():
    contents = {p: content_digest(files.join(workdir, p)) for p in products}
    job = owner(workdir)
    files.write_json(path(workdir, stage),
                     dict(digest=wanted, version=version(stage), job=job, products=contents,
                          written=time.strftime("%Y-%m-%d %H:%M:%S"), **info))


OWNER_FILE = "job.json"


def owner(workdir: str) -> str | None:
  """The job recorded in the workdir's ``stages/job.json`` (None without one); raises
  errors.InputError for a file that is not a job record."""
  owner_path = files.join(workdir, STAMPS_DIR, OWNER_FILE)
  if not files.exists(owner_path):
    return None
  try:
    return files.read_json(owner_path)["job"]
  except (ValueError, KeyError, TypeError):
    raise errors.InputError(f"{owner_path}: not a job record (expected {{\"job\": ...}}); "
                            f"use another workdir") from None


def claim(workdir: str, job: str, products: tuple[str, ...],
          stamp_owners: tuple[tuple[str, str], ...] = (), record: bool = True) -> None:
  """Makes ``workdir`` the job's, or stops: a workdir holds the products of one job.

  A workdir without ``stages/job.json`` but with a stamp of ``stamp_owners`` ((stage,
  job) pairs, first match wins) belongs to that job: workdirs written before job
  records keep their owner. Raises errors.InputError when the workdir belongs to
  another job, or holds any of ``products`` (or stamps) with no record of its job.
  Without ``record`` (a job that adds to another's workdir) nothing is written.
  """
  owner_path = files.join(workdir, STAMPS_DIR, OWNER_FILE)
  found_owner = owner(workdir)
  if found_owner is None:
    found_owner = next((j for stage, j in stamp_owners if files.exists(path(workdir, stage))),
                       None)
  if found_owner is not None and found_owner != job:
    raise errors.InputError(
        f"{workdir} holds the products of the {found_owner} job ({owner_path}); the {job} job "
        f"would replace or reuse them: use another workdir")
  if found_owner is None:
    found = [p for p in products if files.exists(files.join(workdir, p))]
    stamps_dir = files.join(workdir, STAMPS_DIR)
    if files.exists(stamps_dir):
      found += [files.join(STAMPS_DIR, n) for n in sorted(files.listdir(stamps_dir))]
    if found:
      raise errors.InputError(
          f"{workdir} holds {', '.join(found[:4])}{' ...' if len(found) > 4 else ''} with no "
          f"record of the job that wrote them ({owner_path}): use another workdir")
  if files.exists(owner_path) or not record:
    return
  sharding.sync("jreid: workdir checked")  # every process looked before it is claimed
  if sharding.is_main_process():
    files.write_json(owner_path, dict(job=job, written=time.strftime("%Y-%m-%d %H:%M:%S")))
  sharding.sync("jreid: workdir claimed")


@functools.cache
def commit() -> str | None:
  """jreid's git commit (``+changes`` with uncommitted changes), None outside a checkout."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  git = lambda *args: subprocess.run(["git", "-C", root, *args], capture_output=True,
                                     text=True, timeout=30)
  try:
    head = git("rev-parse", "HEAD")
    if head.returncode:
      return None
    changed = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head.stdout.strip() + ("+changes" if changed else "")


def retire(workdir: str, products: tuple[str, ...]) -> list[str]:
  """Removes (main process) an earlier run's ``products`` that this run writes anew,
  so that none stands as this run's when it writes less or stops early; returns them."""
  found = [p for p in products if files.exists(files.join(workdir, p))]
  if found and sharding.is_main_process():
    for p in found:
      full = files.path(files.join(workdir, p))
      if full.is_dir():
        full.rmtree()
      else:
        full.unlink()
    logging.info("removed the earlier run's %s (this run writes them anew)", ", ".join(found))
  sharding.sync("jreid: earlier products retired")
  return found
