"""jreid.hostmem: the GLIBC_TUNABLES value main.py restarts with, and the restart itself."""

import os
import platform
import subprocess
import sys

import pytest

from jreid import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("current, libc, mode, expected", [
    (None, ("glibc", "2.36"), "madvise", "glibc.malloc.hugetlb=1"),
    ("", ("glibc", "2.35"), "always", "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", ("glibc", "2.39"), "madvise",
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("glibc.malloc.hugetlb=0", ("glibc", "2.36"), "madvise", None),   # the user's choice
    ("a=1:glibc.malloc.hugetlb=2", ("glibc", "2.36"), "madvise", None),
    (None, ("glibc", "2.34"), "madvise", None),                       # no such tunable
    (None, ("glibc", "2.36"), "never", None),
    (None, ("glibc", "2.36"), "", None),                              # no THP file
    (None, ("", ""), "madvise", None),                                # musl, macOS
])
def test_tunables_with_huge_pages(current, libc, mode, expected):
  assert hostmem.tunables_with_huge_pages(current, libc, mode) == expected


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  (tmp_path / "enabled").write_text("always [madvise] never\n")
  assert hostmem.thp_mode(str(tmp_path / "enabled")) == "madvise"
  assert hostmem.thp_mode(str(tmp_path / "absent")) == ""


@pytest.mark.skipif(hostmem.tunables_with_huge_pages(None, platform.libc_ver(),
                                                     hostmem.thp_mode()) is None,
                    reason="not Linux with glibc >= 2.35 and transparent huge pages")
def test_reexec_restarts_the_same_command_with_the_tunable():
  code = ("import os, sys; from jreid import hostmem; print('start', flush=True); "
          "hostmem.reexec_with_huge_pages(); print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env["PYTHONPATH"] = ROOT
  out = subprocess.run([sys.executable, "-c", code, "x", "--y=1"], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout.split("\n")
  # Started twice (the second time with the tunable set), then ran on with its arguments.
  assert out[:3] == ["start", "start", "glibc.malloc.hugetlb=1 ['x', '--y=1']"]
  env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=0"
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout.split("\n")
  assert out[:2] == ["start", "glibc.malloc.hugetlb=0 []"]
