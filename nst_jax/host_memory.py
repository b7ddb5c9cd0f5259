"""Keep freed host memory in the process, so that XLA's CPU buffers are not page-faulted anew.

XLA's CPU runtime allocates each call's temporary buffer with
``posix_memalign`` from a worker thread. glibc serves a request above 64 MiB
from such a thread with a fresh ``mmap`` and returns it with ``munmap``, so
every call touches every page of it again: measured here, 20k page faults and
~30 ms of kernel time per 512x512 call of the 26-style network, ~150 ms at
1024x1024 (a quarter of the call's CPU time); a training step of a width-16
network on one 256-px crop faulted ~150k pages (1.55 against 1.87 steps/s
with this setting). One malloc arena that never returns memory to the
kernel turns that into plain reuse.

This changes the whole process, so it is for programs, not for library code:
``scripts/fast_stylize.py``, ``scripts/train_fast.py``,
``benchmarks/realtime.py`` and ``benchmarks/training.py`` call
``keep_freed_memory()`` once, before JAX runs anything (XLA's threads pick
their arena on their first allocation). The optimisation scripts do not:
their iterations run inside one compiled loop, whose buffers stay allocated
(no change measured, ``benchmarks/RESULTS.md``). The cost is that the process keeps its peak memory until it
exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_done = False


def keep_freed_memory() -> bool:
  """Makes glibc's malloc reuse freed memory instead of unmapping it (Linux only).

  Returns:
    True if the settings took effect (or already had), False where malloc is
    not glibc's (then nothing changes).
  """
  global _done
  if _done:
    return True
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  ok = (mallopt(_M_ARENA_MAX, 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
        and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
  _done = ok
  return ok
