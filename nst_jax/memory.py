"""Peak-memory estimate of a run, checked before anything is allocated.

The estimate counts the activations the backward pass keeps (each layer's
convolution and ReLU output up to the deepest tap, plus the backward pass's
working copies), the optimizer state (L-BFGS keeps ``2 * history`` image-sized
vectors), the weights and a fixed runtime overhead. The factors were
calibrated against measured peak RSS on CPU (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import os

from nst_jax import layers
from nst_jax.image_io import longest_side_shape

_ACTIVATION_FACTOR = 1.5        # measured 1.2 (saved forward values + backward temporaries)
OVERHEAD_BYTES = 800 * 2**20   # measured ~770 MB: XLA runtime, weights, programs


def activation_bytes(h: int, w: int, taps) -> int:
  """Bytes of all layer outputs up to the deepest of ``taps`` for one image."""
  last = layers.layer_index(layers.deepest(taps))
  total, ch, cw = 0, h, w
  channels = 3
  for name in layers.LAYER_NAMES[:last + 1]:
    if name.startswith('pool'):
      ch, cw = ch // 2, cw // 2
    elif name.startswith('conv'):
      channels = dict((n, c) for n, _, c in layers.CONV_SPECS)[name]
    total += 4 * ch * cw * channels
  return total


def winograd_kernel_bytes(taps, min_channels: int = 128) -> int:
  """Bytes of the Winograd-transformed kernels (forward and backward, 36
  entries per 3x3 kernel) of the layers ``nst_jax.winograd`` runs, up to the
  deepest of ``taps``: about 410 MB up to relu5_1."""
  last = layers.layer_index(layers.deepest(taps))
  return sum(2 * 36 * cin * cout * 4 for name, cin, cout in layers.CONV_SPECS
             if layers.layer_index(name) <= last and min(cin, cout) >= min_channels)


def estimate_peak_bytes(h: int, w: int, config, style_shapes=()) -> int:
  """Estimated peak memory of stylizing an ``h`` x ``w`` image with ``config``."""
  taps = tuple(config.content_layers) + tuple(config.style_layers)
  # With bands (nst_jax.bands) VGG19 runs on one window of rows at a time.
  act = activation_bytes(layers.band_window_rows(h, getattr(config, 'band_rows', 0), taps),
                         w, taps)
  n = h * w * 3
  if config.optimizer == 'lbfgs' or config.optimizer == 'lbfgs_linesearch':
    stored = 2 if (config.optimizer == 'lbfgs'
                   and getattr(config, 'lbfgs_history_dtype', 'float32') == 'bfloat16') else 4
    opt = n * (2 * config.lbfgs_history * stored + 4 * 4)
  else:
    opt = 4 * n * 4
  band_rows = getattr(config, 'band_rows', 0)
  styles = max((activation_bytes(layers.band_window_rows(sh, band_rows, taps), sw, taps)
                for sh, sw in style_shapes), default=0)
  # No saving is counted for `remat`: XLA's CPU buffers were the same with and
  # without it (1024x768: 2.13 vs 2.14 GiB temp in the compiled chunk, peak
  # RSS 3.01 vs 3.00 GiB), where a 0.6 factor had predicted 2.5 GiB.
  factor = _ACTIVATION_FACTOR
  return int(factor * act + opt + max(styles - act, 0) + fixed_bytes(config))


def fixed_bytes(config) -> int:
  """The part of ``estimate_peak_bytes`` that does not grow with the number
  of problems run together: ``OVERHEAD_BYTES`` plus, wherever Winograd may
  run, its transformed kernels (``'auto'`` is Winograd on CPU only; this
  module does not ask JAX for the backend, so on a GPU it overestimates)."""
  taps = tuple(config.content_layers) + tuple(config.style_layers)
  wino = (winograd_kernel_bytes(taps) if getattr(config, 'conv_algorithm', 'xla') != 'xla'
          and getattr(config, 'precision', 'float32') == 'float32' else 0)
  return wino + OVERHEAD_BYTES


BAND_ROWS = (1024, 512, 256)  # band_rows that fitting_changes suggests, largest first


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


def run_peak_bytes(content_hw, config, style_hws=()) -> int:
  """Estimated peak over the run's scales, from the loaded images' shapes."""
  worst = 0
  for size in config.sizes:
    styles = [longest_side_shape(hw, config.style_size(size)) for hw in style_hws]
    worst = max(worst, estimate_peak_bytes(*longest_side_shape(content_hw, size), config, styles))
  return worst


def largest_fitting_size(aspect_hw: tuple[int, int], config, budget: int,
                         style_hws=()) -> int | None:
  """Largest ``image_size`` (longest side) whose estimate fits in ``budget``.

  Only shapes are computed, so this is instant whatever the sizes. Returns
  None when not even a 1 px image fits (the fixed overhead exceeds the budget).
  """
  def fits(size):
    styles = [longest_side_shape(hw, config.style_size(size)) for hw in style_hws]
    return estimate_peak_bytes(*longest_side_shape(aspect_hw, size), config, styles) <= budget

  if not fits(1):
    return None
  lo, hi = 1, 1 << 16
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if fits(mid):
      lo = mid
    else:
      hi = mid - 1
  return lo


def fitting_changes(content_hw: tuple[int, int], config, budget: int, style_hws=(),
                    limit: int = 2) -> list[dict]:
  """Settings that keep the image size and bring the run's estimate within ``budget``.

  Tries, least intrusive first: a bfloat16 L-BFGS history, ``remat``, both,
  then each with the largest shorter history that fits; then bands of rows
  (``band_rows``, the largest of 1024, 512, 256 that fits, for the Gram
  objective), alone and with those; then Adam (with and without ``remat``).
  A setting is left out when part of it already fits.

  Returns:
    Up to ``limit`` dicts of StyleConfig field -> value (e.g.
    ``{'remat': True, 'lbfgs_history_dtype': 'bfloat16'}``); empty when none fits.
  """
  def fits(changes):
    return run_peak_bytes(content_hw, dataclasses.replace(config, **changes),
                          style_hws) <= budget

  lbfgs = config.optimizer == 'lbfgs'
  bases = [{}]
  if lbfgs and config.lbfgs_history_dtype != 'bfloat16':
    bases = [{'lbfgs_history_dtype': 'bfloat16'}]
  if not config.remat:
    bases += [{**b, 'remat': True} for b in bases]
  candidates = [b for b in bases if b]
  def largest_history(base):
    """The largest shorter history that fits with ``base``, or 0."""
    lo, hi = 0, config.lbfgs_history - 1
    while lo < hi:
      mid = (lo + hi + 1) // 2
      if fits({**base, 'lbfgs_history': mid}):
        lo = mid
      else:
        hi = mid - 1
    return lo

  def with_shorter_history(base):
    """``base`` with the largest shorter L-BFGS history that fits, if it needs one and any does."""
    if lbfgs and config.lbfgs_history > 1 and not fits(base):
      history = largest_history(base)
      if history:
        candidates.append({**base, 'lbfgs_history': history})

  for base in bases:
    with_shorter_history(base)
  if not config.band_rows and config.bands_supported:
    for base in [{}] + [b for b in bases if 'lbfgs_history_dtype' in b and 'remat' not in b]:
      rows = next((r for r in BAND_ROWS if fits({**base, 'band_rows': r})), None)
      if rows is not None:
        candidates.append({**base, 'band_rows': rows})
    with_shorter_history({'band_rows': BAND_ROWS[1]})
  if config.optimizer != 'adam':
    candidates += [{'optimizer': 'adam'}] + ([{'optimizer': 'adam', 'remat': True}]
                                             if not config.remat else [])
  chosen = []
  for c in candidates:  # Skip one whose fitting part was already suggested.
    if fits(c) and not any(d.items() <= c.items() for d in chosen):
      chosen.append(c)
  return chosen[:limit]
