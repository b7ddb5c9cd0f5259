"""Where Gram fails: palette-defined styles, Gram against sliced Wasserstein, measured.

  python -m benchmarks.where_gram_fails --out=/tmp/wgf          # ~4 min on 2 quiet cores
  python -m benchmarks.where_gram_fails --size=64 --iterations=5 --styles=poster_bauhaus

For each style (two flat-colour posters rendered here, seated-nude, and
starry_night as the texture control) the content image is stylized at equal
iterations with the Gram loss and with the sliced Wasserstein loss, from the
same start (the reference's N(0, 0.001^2) noise), with L-BFGS:

* ``gram``: the default objective;
* ``sw``: ``--style_loss=sw`` (C/8 directions per layer, new every 25
  iterations: the defaults);
* ``sw_every1``: the same with new directions every iteration
  (``--sw_redraw=1``), the reason for the default;
* ``gram+color`` and ``sw+color``: each with the colour term
  (``--color_weight=1e4``), the sliced Wasserstein loss on the pixels, so
  ``sw+color`` matches distributions at every level from the pixels up.

The SW style weight is set so that its style term starts equal to Gram's on
this problem (the same style/content balance at the start); everything else
is the default objective. Then, against the style image's pixels:

* ``sw_rgb``: sliced Wasserstein distance between the output's and the
  style's pixel colours, sqrt(mean over 256 fixed directions of W2^2), in
  0-255 RGB units;
* ``hist_tv``: total-variation distance between 3-D colour histograms
  (8 x 8 x 8 bins): 0 identical, 1 disjoint.

Spatial control: two styles under two masks (the upper part of the content,
the sky, takes the first style, the rest the second), guided Gram and guided
SW. For each region and style layer the region's Gram matrix (hard mask, one
feature pixel in from the border) is compared with each style's; the factor
is distance to the other style / distance to its own, per region.

Writes ``results.json``, the styles, every output and side-by-side sheets in
``--out``.
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np

IMAGES = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'images')
DEFAULTS = {
    'size': 128,
    'iterations': 100,
    'content': os.path.join(IMAGES, 'tubingen.jpg'),
    'styles': ['poster_bauhaus', 'poster_sunset', 'seated-nude', 'starry_night'],
    'spatial': True,
    'out': 'where_gram_fails',
}
COLOR_WEIGHT = 1e4
VARIANTS = (('gram', ('gram',), {}), ('sw', ('sw',), {}), ('sw_every1', ('sw',), dict(redraw=1)),
            ('gram+color', ('gram',), dict(color_weight=COLOR_WEIGHT)),
            ('sw+color', ('sw',), dict(color_weight=COLOR_WEIGHT)))


# --- Styles rendered here -----------------------------------------------------


def render_poster(name: str, size: int = 512) -> np.ndarray:
  """A flat-colour poster: few colours, hard edges; RGB [H, W, 3] in [0, 1]."""
  h, w = size * 3 // 4, size
  yy, xx = np.mgrid[0:h, 0:w] / size
  if name == 'poster_bauhaus':  # cream ground, red / blue / yellow / black shapes
    palette = np.array([[0.95, 0.92, 0.82], [0.85, 0.15, 0.12], [0.10, 0.25, 0.65],
                        [0.98, 0.78, 0.10], [0.08, 0.08, 0.08]])
    label = np.zeros((h, w), int)
    rng = np.random.default_rng(0)
    for k in range(14):
      c = 1 + k % 4
      cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.75), rng.uniform(0.04, 0.16)
      if k % 3 == 0:
        label[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = c
      else:
        label[(abs(xx - cx) < r) & (abs(yy - cy) < r * rng.uniform(0.2, 1.2))] = c
  elif name == 'poster_sunset':  # banded sky, sun, black hills: a five-colour print
    palette = np.array([[0.99, 0.55, 0.20], [0.93, 0.30, 0.42], [0.45, 0.18, 0.45],
                        [0.15, 0.12, 0.30], [0.99, 0.90, 0.45], [0.05, 0.04, 0.08]])
    label = np.clip((yy / 0.75 * 4).astype(int), 0, 3)[::-1]
    label[(xx - 0.5) ** 2 + (yy - 0.42) ** 2 < 0.12 ** 2] = 4
    hills = 0.55 + 0.06 * np.sin(xx * 9) + 0.04 * np.sin(xx * 23 + 1)
    label[yy > hills] = 5
  else:
    raise ValueError(f'unknown poster {name!r}')
  return palette[label].astype(np.float32)


def load_style(name: str, size: int) -> np.ndarray:
  from nst_jax import image_io
  if name.startswith('poster_'):
    return image_io.resize_longest(render_poster(name, 2 * size), size)
  path = os.path.join(IMAGES, name + '.jpg')
  return image_io.resize_longest(image_io.load_image(path), size)


# --- Colour metrics (numpy) -----------------------------------------------------


def sw_rgb(a: np.ndarray, b: np.ndarray, num_directions: int = 256) -> float:
  """Sliced W2 distance between two images' pixel colours, 0-255 units."""
  rng = np.random.default_rng(1234)
  d = rng.normal(size=(3, num_directions))
  d /= np.linalg.norm(d, axis=0)
  pa = np.sort(a.reshape(-1, 3).astype(np.float64) * 255 @ d, axis=0)
  pb = np.sort(b.reshape(-1, 3).astype(np.float64) * 255 @ d, axis=0)
  q = (np.arange(len(pa)) + 0.5) / len(pa)
  qb = (np.arange(len(pb)) + 0.5) / len(pb)
  pb = np.stack([np.interp(q, qb, pb[:, k]) for k in range(num_directions)], 1)
  return float(np.sqrt(np.mean((pa - pb) ** 2)))


def hist_tv(a: np.ndarray, b: np.ndarray, bins: int = 8) -> float:
  """Total-variation distance of 3-D colour histograms (bins per channel)."""
  def hist(x):
    idx = np.clip((x.reshape(-1, 3) * bins).astype(int), 0, bins - 1)
    h = np.bincount((idx[:, 0] * bins + idx[:, 1]) * bins + idx[:, 2], minlength=bins ** 3)
    return h / h.sum()
  return float(0.5 * np.abs(hist(a) - hist(b)).sum())


# --- Runs -------------------------------------------------------------------------


def _stylize(ws, content, styles, kinds, iterations, masks=None, sw_scale=None, seed=0,
             sw_directions=0, redraw=None, color_weight=0.0):
  """L-BFGS from noise; returns (RGB output, seconds, initial style loss).

  ``redraw``: new random directions every this many iterations (None: the
  default, ``losses.SW_REDRAW_EVERY``);
  ``color_weight`` > 0 adds the colour term (``--color_weight``).
  """
  import jax
  import jax.numpy as jnp
  import optax
  from nst_jax import lbfgs, losses
  prep = ws.preprocessing
  spec = losses.LossSpec(style_losses=kinds, sw_directions=sw_directions,
                         color_loss=color_weight > 0,
                         sw_redraw=redraw or losses.SW_REDRAW_EVERY)
  params = jax.device_put(ws.params)
  c = jnp.asarray(prep.apply(content), jnp.float32)
  s = [jnp.asarray(prep.apply(x), jnp.float32) for x in styles]
  targets = jax.jit(functools.partial(losses.make_targets, spec=spec))(
      params, c, s, jnp.ones(len(s)) / len(s),
      content_masks=None if masks is None else jnp.asarray(masks))
  lw = losses.default_loss_weights(spec, color_weight=color_weight)
  if sw_scale is not None:
    lw['style_losses'] = {k: jnp.float32(sw_scale if k == 'sw' else 1.0) for k in kinds}
  opt = lbfgs.scale_by_torch_lbfgs(100, 1.0)
  loss = functools.partial(losses.total_loss, spec=spec)

  @jax.jit
  def run(x, n):
    def body(i, carry):
      x, state = carry
      g = jax.grad(lambda z: loss(z, params, targets, lw,
                                  key=spec.key_for(jax.random.key(seed), i))[0])(x)
      updates, state = opt.update(g, state, x)
      return optax.apply_updates(x, updates), state
    return jax.lax.fori_loop(0, n, body, (x, opt.init(x)))[0]

  x0 = 0.001 * jax.random.normal(jax.random.key(seed), c.shape, jnp.float32)
  _, terms0 = jax.jit(loss)(x0, params, targets, lw, key=jax.random.key(seed))
  t0 = time.perf_counter()
  x = run(x0, iterations)
  rgb = np.clip(np.asarray(prep.invert(np.asarray(x)), np.float32), 0, 1)
  return rgb, time.perf_counter() - t0, float(terms0['style'])


def _sw_scale(ws, content, styles, masks=None):
  """Factor on the sw kind so its style term starts equal to Gram's."""
  _, _, g0 = _stylize(ws, content, styles, ('gram',), 0, masks)
  _, _, s0 = _stylize(ws, content, styles, ('sw',), 0, masks, sw_scale=1.0)
  return g0 / s0


def region_factors(ws, image, styles, masks, layers=('relu1_1', 'relu2_1', 'relu3_1')):
  """Per region: Gram distance to the other style / to its own (hard, eroded masks)."""
  import jax.numpy as jnp
  from nst_jax import losses, vgg
  prep = ws.preprocessing
  feats = vgg.features(ws.params, jnp.asarray(prep.apply(image))[None], layers)
  sfeats = [vgg.features(ws.params, jnp.asarray(prep.apply(s))[None], layers) for s in styles]
  pyr = losses.mask_pyramid(jnp.asarray(masks), layers)
  out = []
  for r in range(len(styles)):
    own = other = 0.0
    for l in layers:
      m = np.asarray(pyr[l][r]) > 0.999
      m[1:-1, 1:-1] &= m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
      g = np.asarray(losses.guided_gram(feats[l][0], jnp.asarray(m[None], jnp.float32))[0])
      gs = [np.asarray(losses.gram(f[l][0])) for f in sfeats]
      own += np.sum((g - gs[r]) ** 2) / np.sum(gs[r] ** 2)
      other += np.sum((g - gs[1 - r]) ** 2) / np.sum(gs[1 - r] ** 2)
    out.append(float(other / own))
  return out


def _sheet(images, path, height=192):
  from nst_jax import image_io
  row = [image_io.resize_to(im, height, max(1, round(im.shape[1] * height / im.shape[0])))
         for im in images]
  gap = np.ones((height, 4, 3), np.float32)
  parts = []
  for im in row:
    parts += [im, gap]
  image_io.save_image(path, np.concatenate(parts[:-1], axis=1))


def run(flags: dict) -> dict:
  from nst_jax import image_io
  from nst_jax import weights as weights_lib
  f = {**DEFAULTS, **(flags or {})}
  out = f['out']
  os.makedirs(out, exist_ok=True)
  ws = weights_lib.load()
  size, iters = int(f['size']), int(f['iterations'])
  content = image_io.resize_longest(image_io.load_image(f['content']), size)
  results = {'size': size, 'iterations': iters, 'styles': {}}
  for name in f['styles']:
    style = load_style(name, size)
    image_io.save_image(os.path.join(out, f'style_{name}.png'), style)
    scale = _sw_scale(ws, content, [style])
    row = {'sw_scale': scale, 'content': {'sw_rgb': sw_rgb(content, style),
                                          'hist_tv': hist_tv(content, style)}}
    outputs = [style, content]
    for label, kinds, extra in VARIANTS:
      rgb, secs, _ = _stylize(ws, content, [style], kinds, iters,
                              sw_scale=scale if 'sw' in kinds else None, **extra)
      image_io.save_image(os.path.join(out, f'{name}_{label}.png'), rgb)
      row[label] = {'sw_rgb': sw_rgb(rgb, style), 'hist_tv': hist_tv(rgb, style),
                    'seconds': secs}
      outputs.append(rgb)
      print(name, label, row[label], flush=True)
    _sheet(outputs, os.path.join(out, f'sheet_{name}.jpg'))
    results['styles'][name] = row
  if f['spatial']:
    styles = [load_style('starry_night', size), load_style('poster_bauhaus', size)]
    h, w = content.shape[:2]
    masks = np.zeros((2, h, w), np.float32)
    masks[0, :int(0.42 * h)] = 1.0  # tubingen's sky and roofs
    masks[1] = 1.0 - masks[0]
    spatial = {}
    sheet = [*styles, content]
    for label, kinds, extra in (('guided_gram', ('gram',), {}), ('guided_sw', ('sw',), {})):
      scale = _sw_scale(ws, content, styles, masks) if 'sw' in kinds else None
      rgb, secs, _ = _stylize(ws, content, styles, kinds, iters, masks=masks, sw_scale=scale,
                              **extra)
      image_io.save_image(os.path.join(out, f'spatial_{label}.png'), rgb)
      spatial[label] = {'factor_per_region': region_factors(ws, rgb, styles, masks),
                        'seconds': secs}
      sheet.append(rgb)
      print(label, spatial[label], flush=True)
    spatial['content_factor_per_region'] = region_factors(ws, content, styles, masks)
    _sheet(sheet, os.path.join(out, 'sheet_spatial.jpg'))
    results['spatial'] = spatial
  with open(os.path.join(out, 'results.json'), 'w') as fh:
    json.dump(results, fh, indent=1)
  return results


def markdown(results: dict) -> str:
  lines = [f'{results["size"]} px, {results["iterations"]} L-BFGS iterations from '
           'noise; colour distance of the output to the style, SW in RGB (0-255) / 3-D '
           'histogram TV (lower is closer).', '',
           '| style | content | ' + ' | '.join(label for label, _, _ in VARIANTS) + ' |',
           '|---' * (len(VARIANTS) + 2) + '|']
  for name, r in results['styles'].items():
    cells = [f'{r[k]["sw_rgb"]:.1f} / {r[k]["hist_tv"]:.3f}'
             for k in ('content', *(label for label, _, _ in VARIANTS))]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  if 'spatial' in results:
    s = results['spatial']
    lines += ['', '| spatial control | sky (starry_night) | ground (poster) |', '|---|---|---|']
    for label in ('content_factor_per_region', 'guided_gram', 'guided_sw'):
      v = s[label] if label.startswith('content') else s[label]['factor_per_region']
      lines.append(f'| {label} | {v[0]:.2f}x | {v[1]:.2f}x |')
  return '\n'.join(lines)


if __name__ == '__main__':
  from benchmarks import cli
  cli.main(DEFAULTS, run, markdown, {
      'size': 'Longest side, px.',
      'iterations': 'L-BFGS iterations per run.',
      'content': 'Content image.',
      'styles': 'poster_bauhaus, poster_sunset, or names of ../shared/data/images/*.jpg.',
      'spatial': 'Also the two-mask experiment.',
      'out': 'Output folder.',
  })
