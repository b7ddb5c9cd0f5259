"""Peak-memory estimate of a run, checked before anything is allocated.

The estimate counts the activations the backward pass keeps (each layer's
convolution and ReLU output up to the deepest tap, plus the backward pass's
working copies), the optimizer state (L-BFGS keeps ``2 * history`` image-sized
vectors), the weights and a fixed runtime overhead. The factors were
calibrated against measured peak RSS on CPU (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os

from nst_jax import vgg

_ACTIVATION_FACTOR = 3.0        # saved forward values + backward temporaries
_OVERHEAD_BYTES = 600 * 2**20   # XLA runtime, weights, compiled programs


def activation_bytes(h: int, w: int, layers) -> int:
  """Bytes of all layer outputs up to the deepest of ``layers`` for one image."""
  last = vgg.LAYER_NAMES.index(vgg.deepest(layers))
  total, ch, cw = 0, h, w
  channels = 3
  for name in vgg.LAYER_NAMES[:last + 1]:
    if name.startswith('pool'):
      ch, cw = ch // 2, cw // 2
    elif name.startswith('conv'):
      channels = dict((n, c) for n, _, c in vgg.CONV_SPECS)[name]
    total += 4 * ch * cw * channels
  return total


def estimate_peak_bytes(h: int, w: int, config, style_shapes=()) -> int:
  """Estimated peak memory of stylizing an ``h`` x ``w`` image with ``config``."""
  layers = tuple(config.content_layers) + tuple(config.style_layers)
  act = activation_bytes(h, w, layers)
  n = h * w * 3
  if config.optimizer == 'lbfgs' or config.optimizer == 'lbfgs_linesearch':
    opt = 4 * n * (2 * config.lbfgs_history + 4)
  else:
    opt = 4 * n * 4
  styles = max((activation_bytes(sh, sw, layers) for sh, sw in style_shapes), default=0)
  factor = _ACTIVATION_FACTOR * (0.6 if config.remat else 1.0)
  return int(factor * act + opt + max(styles - act, 0) + _OVERHEAD_BYTES)


def available_bytes() -> int | None:
  """Memory the run may use: the accelerator's limit, else the host's available RAM."""
  try:
    import jax
    dev = jax.devices()[0]
    if dev.platform != 'cpu':
      stats = dev.memory_stats() or {}
      if 'bytes_limit' in stats:
        return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    return None


def largest_fitting_size(aspect_hw: tuple[int, int], config, budget: int) -> int:
  """Largest ``image_size`` (longest side) whose estimate fits in ``budget``."""
  h0, w0 = aspect_hw
  lo, hi = 16, 16384
  while lo < hi:
    mid = (lo + hi + 1) // 2
    s = mid / max(h0, w0)
    if estimate_peak_bytes(max(1, round(h0 * s)), max(1, round(w0 * s)), config) <= budget:
      lo = mid
    else:
      hi = mid - 1
  return lo
