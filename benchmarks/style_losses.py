"""Cost of the distribution style losses against the Gram loss, per iteration.

  python -m benchmarks.style_losses                     # 512 px, 5 style layers, ~3 min on 2 cores
  python -m benchmarks.style_losses --size=256 --directions=8,32 --repeats=3

One iteration is what the run loop does on the device: the objective's value
and gradient with respect to the image (VGG19 forward and backward, every
loss term), inside a compiled ``lax.fori_loop`` of ``steps`` iterations so
that nothing returns to the host in between. Each variant is compiled
first; the timed calls alternate between variants (a busy machine slows them
alike) and the median is reported. The ratio to Gram is the figure to read.
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import numpy as np

DEFAULTS = {
    'size': 512,
    'content': None,  # default: ../shared/data/images/tubingen.jpg (noise if absent)
    'style': None,    # default: ../shared/data/images/starry_night.jpg
    'variants': ['gram', 'sw', 'gram+color'],
    'directions': [0],    # sw directions per layer (capped at the channels); 0: C / 8
    'steps': 2,           # iterations per compiled call
    'repeats': 3,
}

_IMAGES = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'images')


def _image(path, fallback_seed, size):
  from nst_jax import image_io
  if path and os.path.isfile(path):
    return image_io.resize_longest(image_io.load_image(path), size)
  rng = np.random.default_rng(fallback_seed)
  return rng.uniform(size=(size * 3 // 4, size, 3)).astype(np.float32)


def _variant_spec(name: str, directions: int):
  from nst_jax import losses
  kinds = tuple(k for k in name.split('+') if k != 'color') or ('gram',)
  return losses.LossSpec(style_losses=kinds, sw_directions=directions,
                         color_loss='color' in name.split('+'))


def run(flags: dict) -> dict:
  """Times each variant in ``flags`` (see ``DEFAULTS``); returns a JSON-able dict."""
  import jax
  import jax.numpy as jnp
  from nst_jax import losses
  from nst_jax import vgg
  from nst_jax import weights as weights_lib
  f = {**DEFAULTS, **(flags or {})}
  ws = weights_lib.load()
  prep = ws.preprocessing
  size = int(f['size'])
  content = prep.apply(_image(f['content'] or os.path.join(_IMAGES, 'tubingen.jpg'), 0, size))
  style = prep.apply(_image(f['style'] or os.path.join(_IMAGES, 'starry_night.jpg'), 1, size))
  params = vgg.with_backward_kernels(jax.device_put(ws.params))
  content, style = jnp.asarray(content, jnp.float32), jnp.asarray(style, jnp.float32)
  steps = int(f['steps'])

  variants = {}
  for name in f['variants']:
    dirs = [int(d) for d in f['directions']] if 'sw' in name.split('+') else [None]
    for d in dirs:
      label = name if d is None else f'{name}@{d or "C/8"}'
      variants[label] = _variant_spec(name, d or 0)

  def make(spec):
    targets = jax.jit(functools.partial(losses.make_targets, spec=spec))(
        params, content, [style], jnp.ones(1))
    lw = losses.default_loss_weights(spec, color_weight=1.0)
    grad = jax.grad(lambda x, k: losses.total_loss(x, params, targets, lw, spec, key=k)[0])

    @jax.jit
    def loop(x):
      def body(i, x):  # A plain gradient step: the optimizer's cost is the same for all.
        return x - 1e-3 * grad(x, jax.random.fold_in(jax.random.key(0), i))
      return jax.lax.fori_loop(0, steps, body, x)
    return loop

  x0 = content + 10.0 * jax.random.normal(jax.random.key(1), content.shape)
  fns, compile_s = {}, {}
  for name, spec in variants.items():
    t0 = time.perf_counter()
    fns[name] = make(spec)
    jax.block_until_ready(fns[name](x0))
    compile_s[name] = time.perf_counter() - t0
  times = {name: [] for name in fns}
  for _ in range(int(f['repeats'])):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(x0))
      times[name].append((time.perf_counter() - t0) / steps)
  ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
  return {
      'device': f'{jax.devices()[0].platform}:{jax.devices()[0].device_kind}',
      'cores': os.cpu_count(), 'jax': jax.__version__, 'size': size,
      'image_hw': list(content.shape[:2]), 'style_layers': list(losses.LossSpec().style_layers),
      'steps': steps, 'repeats': int(f['repeats']),
      'ms_per_iteration': ms,
      'ratio_to_gram': {name: ms[name] / ms['gram'] for name in ms} if 'gram' in ms else {},
      'first_call_s': compile_s,
  }


def markdown(results: dict) -> str:
  """The results as a markdown table."""
  lines = [f'Device {results["device"]} ({results["cores"]} cores), jax {results["jax"]}; '
           f'{results["image_hw"][1]}x{results["image_hw"][0]} px, style layers '
           f'{", ".join(results["style_layers"])}; value and gradient per iteration, median of '
           f'{results["repeats"]} alternating calls of {results["steps"]} iterations.', '',
           '| style loss | ms / iteration | x Gram |', '|---|---|---|']
  for name, ms in results['ms_per_iteration'].items():
    ratio = results['ratio_to_gram'].get(name)
    lines.append(f'| {name} | {ms:.0f} | {"" if ratio is None else f"{ratio:.2f}"} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  from benchmarks import cli
  cli.main(DEFAULTS, run, markdown, {
      'size': 'Longest side, px.',
      'content': 'Content image (default tubingen).',
      'style': 'Style image (default starry_night).',
      'variants': 'Style losses to time: kinds joined with +, e.g. gram+sw, sw+color.',
      'directions': 'Sliced-Wasserstein directions per layer to try (0: the default, channels / 8).',
      'steps': 'Iterations per compiled call.',
      'repeats': 'Timed calls per variant.',
  })
