"""nst_jax.host_memory: freed blocks are reused instead of page-faulted afresh.

Each check runs in a fresh interpreter, since the setting changes the whole
process for good. The reference is the kernel's own count of minor page
faults (``getrusage``) around repeated 100 MB allocations, with and without
the setting.
"""

import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == 'keep':
      from nst_jax import host_memory
      if not host_memory.keep_freed_memory():
        print('unsupported')
        sys.exit(0)
    def faults():
      return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(100 * 2**20 // 8)  # 100 MB, written: every page touched
    del block
    before = faults()
    for _ in range(5):
      block = np.ones(100 * 2**20 // 8)
      del block
    print((faults() - before) / 5)
""")


def _faults_per_allocation(mode: str) -> str:
  done = subprocess.run([sys.executable, '-c', _PROBE, mode], capture_output=True,
                        text=True, timeout=120, check=True)
  return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc only')
def test_a_freed_100mb_block_is_reused_without_page_faults():
  kept = _faults_per_allocation('keep')
  if kept == 'unsupported':
    pytest.skip('malloc is not glibc: keep_freed_memory() changes nothing')
  default = float(_faults_per_allocation('default'))
  # glibc's default unmaps the block on free, so each new one faults again
  # (25,600 pages, or ~50 where the kernel backs it with huge pages); with
  # the setting the second and later blocks reuse the first one's pages.
  assert default >= 20, default
  assert float(kept) <= 0.05 * default, (kept, default)
