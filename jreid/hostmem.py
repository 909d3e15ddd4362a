"""Host memory for XLA:CPU: glibc's large allocations on transparent huge pages.

XLA:CPU allocates the temporary buffer of every run of a compiled step with malloc
and frees it when the run ends (gigabytes for a training step). glibc serves a block
that size with a fresh ``mmap`` each time, so each step faults in, and the kernel
zeroes, every page of it again, 4 KiB at a time. With the glibc tunable
``glibc.malloc.hugetlb=1`` (glibc >= 2.35) malloc asks for transparent huge pages on
its mmapped blocks (``madvise(MADV_HUGEPAGE)``): 2 MiB a fault, 512x fewer. The
numbers computed do not change; "Host memory" in ``docs/cpu_training.md`` has the
measurements.

A tunable is read when the process starts, so ``reexec_with_huge_pages`` (called
first by ``main.py`` and ``benchmarks/train_step.py``) starts the same command again
with it set. It does nothing where it cannot help (not Linux with glibc, or the
kernel's transparent huge pages set to "never") or where ``GLIBC_TUNABLES`` already
names ``glibc.malloc.hugetlb``: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` keeps
glibc's default. This module imports nothing heavy, so the restart costs milliseconds.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_MODE_FILE) -> str:
  """The kernel's transparent-huge-page mode ("always", "madvise", "never"), or "" when
  the file is absent or unreadable."""
  try:
    with open(path, encoding="ascii") as f:
      text = f.read()
  except OSError:
    return ""
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else ""


def tunables_with_huge_pages(current: str | None, libc: tuple[str, str],
                             mode: str) -> str | None:
  """The ``GLIBC_TUNABLES`` value to restart with, or None to leave the process as is.

  current: the environment's ``GLIBC_TUNABLES`` (None when unset); libc: what
  ``platform.libc_ver()`` returns, e.g. ("glibc", "2.36"); mode: ``thp_mode()``.
  """
  name, version = libc
  try:
    new_enough = tuple(int(p) for p in version.split(".")[:2]) >= (2, 35)
  except ValueError:
    new_enough = False
  if name != "glibc" or not new_enough or mode not in ("always", "madvise"):
    return None
  entries = [e for e in (current or "").split(":") if e]
  if any(e.split("=", 1)[0] == TUNABLE for e in entries):
    return None
  return ":".join(entries + [SETTING])


def reexec_with_huge_pages() -> None:
  """Replaces this process by the same command with ``glibc.malloc.hugetlb=1`` in
  ``GLIBC_TUNABLES`` (see the module docstring); returns when there is nothing to do."""
  if not sys.platform.startswith("linux"):
    return
  value = tunables_with_huge_pages(os.environ.get("GLIBC_TUNABLES"), platform.libc_ver(),
                                   thp_mode())
  if value is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, dict(os.environ, GLIBC_TUNABLES=value))
