"""Quality of a trained real-time network, measured as in Johnson et al. 2016 (Fig. 5).

The Gatys objective (``stylize``'s defaults: content relu4_2 x 5, style
relu1_1..relu5_1 x 100, TV 1e-3) of the network's output at 512 px on
held-out photos, against ``nst_jax.stylize`` with L-BFGS after 50 and 300
iterations, from random noise (the reference's default start) and from the
content image. Every image is scored by the same function, as the RGB image a
user gets (clipped to [0, 1]).

    python -m benchmarks.train_quality --phase=lbfgs --out=/tmp/quality \\
        --photos=a.jpg,b.jpg --style=the_scream.jpg --long_photos=a
    python -m benchmarks.train_quality --phase=net --out=/tmp/quality \\
        --photos=a.jpg,b.jpg --style=the_scream.jpg --net=scream.safetensors:26 \\
        --net=small.safetensors:0
    python -m benchmarks.train_quality --phase=report --out=/tmp/quality

``--long_photos=a,b``: these photos also get 300 iterations (the @50 figure
then comes from the same run, saved at iteration 50). Results already in
``results.json`` are not computed again.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

from absl import app
from absl import flags

flags.DEFINE_enum('phase', 'report', ['lbfgs', 'net', 'report'], 'What to run.')
flags.DEFINE_string('out', '/tmp/train_quality', 'Folder for results (JSON, images).')
flags.DEFINE_list('photos', [], 'Held-out content photos.')
flags.DEFINE_string('style', None, 'The style painting.')
flags.DEFINE_integer('image_size', 512, 'Longest side of the evaluation.')
flags.DEFINE_list('long_photos', [], 'Names (stems) of the photos that also get 300 '
                  'iterations.')
flags.DEFINE_list('inits', ['random', 'image'], 'L-BFGS starts to run.')
flags.DEFINE_multi_string('net', [], 'PATH:STYLE_INDEX of a trained network (repeatable).')
flags.DEFINE_string('sheet', None, 'Write a side-by-side JPEG here (phase report).')
flags.DEFINE_list('merge', [], 'Further result folders to read (phase report).')
flags.DEFINE_list('sheet_columns', [], 'Methods shown in the sheet, in order (phase report).')
flags.DEFINE_integer('sheet_cell', 256, 'Longest side of a sheet cell, px.')
flags.DEFINE_string('photos_dir', None, 'Folder of the photos, for the sheet\'s first column.')
FLAGS = flags.FLAGS


def _log(msg):
  print(f'nst_jax: {msg}', file=sys.stderr, flush=True)


def _scorer(style_rgb, size):
  """Returns score(content_rgb, output_rgb) -> (total, terms) at ``size``."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from nst_jax import engine, losses, transfer, weights
  from nst_jax.config import StyleConfig, plan
  ws = weights.load()
  config = StyleConfig(image_size=size)
  obj = engine.objective(config, ws)
  params, spec, lw = obj.params, obj.spec, obj.loss_weights
  targets_fn = jax.jit(functools.partial(losses.make_targets, spec=spec))
  loss = jax.jit(lambda x, t: losses.total_loss(x, params, t, lw, spec))
  prep = ws.preprocessing

  def score(content_rgb, out_rgb):
    scale = plan(config, content_rgb.shape[:2], [style_rgb.shape[:2]]).scales[0]
    content, styles = transfer.prepare_images(content_rgb, [style_rgb], scale, config)
    targets = targets_fn(params, jnp.asarray(prep.apply(content)),
                         [jnp.asarray(prep.apply(s)) for s in styles],
                         jnp.asarray([1.0], jnp.float32))
    out = np.clip(np.asarray(out_rgb, np.float32), 0, 1)
    assert out.shape == content.shape, (out.shape, content.shape)
    total, terms = loss(jnp.asarray(prep.apply(out)), targets)
    return float(total), {k: float(v) for k, v in terms.items()}
  return score, ws


def _save(path, rgb):
  from nst_jax import image_io
  image_io.save_image(str(path), rgb)


def _record(out: Path, key: str, value: dict):
  path = out / 'results.json'
  data = json.loads(path.read_text()) if path.exists() else {}
  data[key] = value
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(data, indent=1))
  os.replace(tmp, path)


def lbfgs_phase(out: Path):
  import nst_jax
  from nst_jax import image_io
  from nst_jax.config import StyleConfig
  style = image_io.load_image(FLAGS.style)
  score, ws = _scorer(style, FLAGS.image_size)
  done = json.loads((out / 'results.json').read_text()) if (out / 'results.json').exists() else {}
  for photo in FLAGS.photos:
    content = image_io.load_image(photo)
    name = Path(photo).stem
    n = 300 if name in FLAGS.long_photos else 50
    for init in FLAGS.inits:
      if all(f'{name}/lbfgs_{init}@{it}' in done for it in {50, n}):
        continue
      saved = {}
      config = StyleConfig(image_size=FLAGS.image_size, num_iterations=n, init=init,
                           print_iter=0, save_iter=50)
      t = time.perf_counter()
      res = nst_jax.stylize(content, [style], config, weights=ws,
                            save_callback=lambda s, it, rgb: saved.__setitem__(it, rgb))
      saved[n] = res.image
      secs = time.perf_counter() - t
      for it in (50, 300):
        if it in saved:
          total, terms = score(content, saved[it])
          _record(out, f'{name}/lbfgs_{init}@{it}', {'loss': total, 'terms': terms,
                                                     'seconds_run': secs, 'iters_run': n})
          _save(out / f'{name}_lbfgs_{init}_{it}.png', saved[it])
          _log(f'{name} L-BFGS {init} @{it}: {total:.4g} ({secs:.0f} s for {n} its)')


def net_phase(out: Path):
  import jax.numpy as jnp
  import numpy as np
  from nst_jax import cin_net, image_io
  style = image_io.load_image(FLAGS.style)
  score, _ = _scorer(style, FLAGS.image_size)
  for spec in FLAGS.net:
    path, _, idx = spec.rpartition(':')
    params, meta = cin_net.load(path)
    n = cin_net.num_styles_of(params)
    label = Path(path).stem
    for photo in FLAGS.photos:
      content = image_io.resize_longest(image_io.load_image(photo), FLAGS.image_size)
      t = time.perf_counter()
      y = np.asarray(cin_net.apply(params, jnp.asarray(content)[None],
                                   jnp.eye(n)[int(idx)]))[0]
      secs = time.perf_counter() - t
      total, terms = score(image_io.load_image(photo), y)
      name = Path(photo).stem
      _record(out, f'{name}/net_{label}', {'loss': total, 'terms': terms, 'seconds_run': secs})
      _save(out / f'{name}_net_{label}.png', y)
      _log(f'{name} net {label}: {total:.4g}')


def report(out: Path):
  data, folder = {}, {}
  for d in [out, *map(Path, FLAGS.merge)]:
    part = json.loads((d / 'results.json').read_text())
    data.update(part)
    folder.update({k: d for k in part})
  photos = sorted({k.split('/')[0] for k in data})
  methods = sorted({k.split('/')[1] for k in data})
  lines = ['| photo | ' + ' | '.join(methods) + ' |', '|---' * (len(methods) + 1) + '|']
  for p in photos:
    row = [f'{data[f"{p}/{m}"]["loss"]:.4g}' if f'{p}/{m}' in data else '' for m in methods]
    lines.append(f'| {p} | ' + ' | '.join(row) + ' |')
  print('\n'.join(lines))
  if FLAGS.sheet:
    write_sheet(data, folder, photos)
  return lines


def write_sheet(data, folder, photos):
  """Rows: photos; columns: the content, then each of --sheet_columns."""
  import numpy as np
  from nst_jax import image_io
  cols = FLAGS.sheet_columns
  rows = []
  if FLAGS.photos:  # Rows: these photos only.
    photos = [Path(p).stem for p in FLAGS.photos]
  for p in photos:
    if not all(f'{p}/{c}' in data for c in cols):
      continue
    cells = []
    for c in cols:
      stem = c.replace('@', '_')
      cells.append(image_io.load_image(folder[f'{p}/{c}'] / f'{p}_{stem}.png'))
    content = image_io.resize_to(image_io.load_image(FLAGS.photos_dir + f'/{p}.jpg'),
                                 *cells[0].shape[:2]) if FLAGS.photos_dir else None
    cells = ([content] if content is not None else []) + cells
    cells = [image_io.resize_longest(c, FLAGS.sheet_cell) for c in cells]
    h = min(c.shape[0] for c in cells)
    cells = [image_io.resize_to(c, h, round(c.shape[1] * h / c.shape[0])) for c in cells]
    gap = np.ones((h, 4, 3), np.float32)
    row = [x for c in cells for x in (c, gap)][:-1]
    rows.append(np.concatenate(row, axis=1))
  w = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 4), (0, w - r.shape[1]), (0, 0)), constant_values=1.0) for r in rows]
  image_io.save_image(FLAGS.sheet, np.concatenate(rows)[:-4])
  _log(f'wrote {FLAGS.sheet} ({os.path.getsize(FLAGS.sheet) // 1024} KB)')


def main(argv):
  del argv
  out = Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  if FLAGS.phase == 'lbfgs':
    lbfgs_phase(out)
  elif FLAGS.phase == 'net':
    net_phase(out)
  else:
    report(out)


if __name__ == '__main__':
  app.run(main)
