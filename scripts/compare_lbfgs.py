"""Our L-BFGS (nst_jax.lbfgs) against torch.optim.LBFGS on the default objective.

Both sides start from the same N(0, 0.001^2) image (drawn with numpy, so it is
bit-identical), take one function evaluation per iteration for
--num_iterations iterations, and the final images are scored by the same
function (the JAX objective, and the PyTorch twin as a cross-check). The
target is final_jax / final_torch <= 1.02.

  python scripts/compare_lbfgs.py                      # golden_gate x starry_night_crop, 256 px
  python scripts/compare_lbfgs.py --with_optax_lbfgs --output_json=lbfgs.json

``stylize()`` draws its init with jax.random, so this script builds the run
from the library's parts (make_targets, make_chunk_fn, scale_by_torch_lbfgs)
instead. Needs torch (``pip install torch==2.13.0``).
"""

import functools
import json
import statistics
import sys
import time
from pathlib import Path

from absl import app
from absl import flags

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / 'shared' / 'data' / 'images'

FLAGS = flags.FLAGS
flags.DEFINE_string('content', str(IMAGES / 'golden_gate.jpg'), 'Content image.')
flags.DEFINE_string('style', str(IMAGES / 'starry_night_crop.png'), 'Style image.')
flags.DEFINE_integer('image_size', 256, 'Longest side of content and style, pixels.')
flags.DEFINE_integer('num_iterations', 200, 'Iterations (= evaluations) on each side.')
flags.DEFINE_integer('history', 100, 'L-BFGS history size on each side.')
flags.DEFINE_integer('seed', 0, 'numpy seed of the shared init.')
flags.DEFINE_integer('timing_chunk', 10,
                     'JAX iterations per timed call; the per-iteration time is the '
                     'median over calls.')
flags.DEFINE_bool('with_optax_lbfgs', False,
                  'Also run optax.lbfgs (zoom line search, several evaluations per '
                  'iteration) from the same init.')
flags.DEFINE_string('output_json', None, 'Write the results here as JSON.')
flags.DEFINE_string('weights', 'vgg19-caffe', 'Weight set name or file.')


def _jax_run(chunk, x0, params, targets, loss_weights, opt, n, timing_chunk):
  """Runs ``n`` iterations in timed chunks; returns (x, seconds per chunk-iteration)."""
  import jax
  import jax.numpy as jnp

  x = jnp.asarray(x0)
  state = opt.init(x)
  # n=0 compiles the program without stepping (the count is a traced int).
  key, start = jax.random.key(0), jnp.int32(0)  # Unused by this objective.
  jax.block_until_ready(chunk(x, state, targets, params, loss_weights, key, start, jnp.int32(0)))
  per_iter, done = [], 0
  while done < n:
    k = min(timing_chunk, n - done)
    t0 = time.perf_counter()
    x, state, _, info = chunk(x, state, targets, params, loss_weights, key, start, jnp.int32(k))
    jax.block_until_ready(x)
    per_iter.append((time.perf_counter() - t0) / k)
    if bool(info.bad):
      raise RuntimeError(f'non-finite objective after {done + int(info.done)} iterations')
    done += k
  return x, per_iter


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import torch

  from nst_jax import image_io
  from nst_jax import lbfgs
  from nst_jax import losses
  from nst_jax import engine
  sys.path.insert(0, str(ROOT))  # benchmarks/, beside the package
  from benchmarks import torch_twin
  from nst_jax import weights as weights_lib

  jax.config.update('jax_default_matmul_precision', 'float32')
  ws = weights_lib.load(FLAGS.weights)
  prep = ws.preprocessing
  content = prep.apply(image_io.resize_longest(image_io.load_image(FLAGS.content),
                                               FLAGS.image_size)).astype(np.float32)
  style = prep.apply(image_io.resize_longest(image_io.load_image(FLAGS.style),
                                             FLAGS.image_size)).astype(np.float32)
  h, w = content.shape[:2]
  x0 = (0.001 * np.random.default_rng(FLAGS.seed).standard_normal((h, w, 3))).astype(np.float32)
  n = FLAGS.num_iterations
  print(f'device: jax {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'torch {torch.get_num_threads()} CPU threads; image {w}x{h}, style '
        f'{style.shape[1]}x{style.shape[0]}, {n} iterations, history {FLAGS.history}',
        flush=True)

  # JAX side.
  spec = losses.LossSpec()
  params = jax.device_put(ws.params)
  loss_weights = losses.default_loss_weights(spec)
  targets = jax.jit(functools.partial(losses.make_targets, spec=spec))(
      params, jnp.asarray(content), [jnp.asarray(style)], jnp.ones(1))
  objective = jax.jit(functools.partial(losses.total_loss, spec=spec))
  opt = lbfgs.scale_by_torch_lbfgs(FLAGS.history)
  chunk = jax.jit(engine.make_chunk_fn(spec, opt))
  x_jax, jax_times = _jax_run(chunk, x0, params, targets, loss_weights, opt, n,
                              FLAGS.timing_chunk)
  print(f'jax: done, {statistics.median(jax_times) * 1e3:.1f} ms/iteration', flush=True)

  # PyTorch side, same init, same targets' definition.
  tparams = torch_twin.params_to_torch(ws.params)
  t_targets = torch_twin.make_targets(
      tparams, torch_twin.nhwc_to_nchw(content), [torch_twin.nhwc_to_nchw(style)], [1.0],
      spec.content_layers, spec.style_layers)
  stamps = []

  def torch_loss(x):
    stamps.append(time.perf_counter())
    return torch_twin.total_loss(x, tparams, t_targets)[0]

  x_torch, torch_values = torch_twin.run_lbfgs(torch_twin.nhwc_to_nchw(x0), torch_loss, n,
                                              history_size=FLAGS.history)
  torch_times = list(np.diff(stamps))
  print(f'torch: done ({len(torch_values)} evaluations), '
        f'{statistics.median(torch_times) * 1e3:.1f} ms/iteration', flush=True)
  x_torch = x_torch.numpy()[0].transpose(1, 2, 0)

  def score(x):
    """The objective at ``x`` by both implementations: (jax, torch)."""
    with torch.no_grad():
      t = torch_twin.total_loss(torch_twin.nhwc_to_nchw(x), tparams, t_targets)[0]
    return float(objective(jnp.asarray(x), params, targets, loss_weights)[0]), float(t)

  initial = score(x0)
  final_jax, final_torch = score(np.asarray(x_jax)), score(x_torch)
  results = {
      'device': f'jax {jax.devices()[0].device_kind}; torch CPU {torch.get_num_threads()} threads',
      'content': FLAGS.content, 'style': FLAGS.style, 'image_hw': [h, w],
      'num_iterations': n, 'history': FLAGS.history, 'seed': FLAGS.seed,
      'initial_objective': initial[0],
      'final_objective_jax': final_jax[0], 'final_objective_torch': final_torch[0],
      'final_objective_jax_scored_by_torch': final_jax[1],
      'final_objective_torch_scored_by_torch': final_torch[1],
      'ratio_jax_over_torch': final_jax[0] / final_torch[0],
      'jax_ms_per_iteration_median': statistics.median(jax_times) * 1e3,
      'torch_ms_per_iteration_median': statistics.median(torch_times) * 1e3,
      'jax_ms_per_iteration': [t * 1e3 for t in jax_times],
      'torch_ms_per_iteration': [t * 1e3 for t in torch_times],
  }

  if FLAGS.with_optax_lbfgs:
    # optax.lbfgs needs the value and a value_fn for its zoom line search.
    opt2 = optax.lbfgs(memory_size=FLAGS.history)
    chunk2 = jax.jit(engine.make_chunk_fn(spec, opt2, needs_value=True))
    x_opt, opt_times = _jax_run(chunk2, x0, params, targets, loss_weights, opt2, n,
                                FLAGS.timing_chunk)
    results['final_objective_optax_lbfgs'] = score(np.asarray(x_opt))[0]
    results['optax_lbfgs_ms_per_iteration_median'] = statistics.median(opt_times) * 1e3

  ratio = results['ratio_jax_over_torch']
  print('\n| run | final objective | ms / iteration (median) |\n|---|---|---|')
  print(f'| nst_jax scale_by_torch_lbfgs | {final_jax[0]:.6g} | '
        f'{results["jax_ms_per_iteration_median"]:.1f} |')
  print(f'| torch.optim.LBFGS (twin) | {final_torch[0]:.6g} | '
        f'{results["torch_ms_per_iteration_median"]:.1f} |')
  if FLAGS.with_optax_lbfgs:
    print(f'| optax.lbfgs (zoom) | {results["final_objective_optax_lbfgs"]:.6g} | '
          f'{results["optax_lbfgs_ms_per_iteration_median"]:.1f} |')
  print(f'\ninitial objective {initial[0]:.6g}; ratio jax/torch {ratio:.4f} '
        f'({"meets" if ratio <= 1.02 else "misses"} the 1.02 target); scored by the torch '
        f'twin: jax {final_jax[1]:.6g}, torch {final_torch[1]:.6g}')
  if FLAGS.output_json:
    Path(FLAGS.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.output_json).write_text(json.dumps(results, indent=2) + '\n')
    print(f'wrote {FLAGS.output_json}')


if __name__ == '__main__':
  app.run(main)
