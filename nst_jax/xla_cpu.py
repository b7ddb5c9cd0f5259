"""Let XLA's CPU convolutions use every core: a process setting for programs.

jaxlib 0.10.2 hands convolutions on the CPU to YNNPACK by default, and there
each convolution runs on one thread. The real-time networks are made of small
convolutions only, so one call of the 26-style network kept 1.1 (256 px) to
1.5 (512 px) of 2 cores busy. ``FLAG`` limits YNNPACK to reductions
(``--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE``), so
XLA runs the convolutions with Eigen on its intra-op thread pool (1.9
cores) and keeps YNNPACK's reductions, which are the fast ones: an empty
list (no YNNPACK at all) made the instance-norm statistics 6x slower (11.3
against 1.9 ms at 512 px). On a 2-core AMD EPYC multistyle26 went from
0.59-0.64x / 0.78-0.80x onnxruntime's speed at 256 / 512 px to 1.03-1.13x / 1.09-1.11x
(``benchmarks/RESULTS.md``, 2026-12-05). With the empty list, the Gatys
engine (20 L-BFGS or Adam iterations at 512x384 px: 897 against 963 and
946 against 869 ms/iteration) and a training step of ``train_fast.py``
(1.49 against 1.47 steps/s; slower with the 64k-pixel strips
``small_conv`` picks under the flag) did not change beyond the machine's
noise: VGG19's wide layers are Winograd matmuls and large convolutions,
parallel already.

XLA reads ``XLA_FLAGS`` once, when JAX creates its CPU backend (the first
computation, not ``import jax``), and the setting holds for the whole
process, numerics included (the two libraries round differently, within
float32 tolerance). So, like ``host_memory.keep_freed_memory``, this is for
programs: ``scripts/fast_stylize.py`` and ``benchmarks/realtime.py`` call
``parallel_convolutions()`` first thing (the other scripts leave XLA as it
is: nothing measured there gained). Library users who want the same start
their program with
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE python ...``.
"""

from __future__ import annotations

import os

_NAME = '--xla_cpu_experimental_ynn_fusion_type'
FLAG = f'{_NAME}=LIBRARY_FUSION_TYPE_REDUCE'


def parallel_convolutions() -> bool:
  """Adds ``FLAG`` to ``XLA_FLAGS`` unless the user already chose a YNNPACK fusion type.

  Must run before JAX's first computation in the process; later it changes
  nothing (XLA has read its flags by then).

  Returns:
    True if ``XLA_FLAGS`` now hold ``FLAG``, False if the
    user's own ``XLA_FLAGS`` sets the fusion type (left as it is).
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if _NAME in flags:
    return FLAG in flags.split()
  os.environ['XLA_FLAGS'] = f'{flags} {FLAG}'.strip()
  return True


def convolutions_are_parallel() -> bool:
  """True if this process's ``XLA_FLAGS`` hold ``FLAG`` (see the module docstring)."""
  return FLAG in os.environ.get('XLA_FLAGS', '').split()
