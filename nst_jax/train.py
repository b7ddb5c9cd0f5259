"""Training real-time style networks: the perceptual loss and one jitted step.

The network is the conditional-instance-norm net of Dumoulin et al. 2017
(``nst_jax.cin_net``); the loss is the perceptual loss of Johnson et al. 2016,
which is the Gatys objective of ``nst_jax.losses`` (same VGG19, Gram matrices
and TV term) applied to the network's output for a batch of content crops: the
content target of each crop is its own VGG19 features, the style target of
each crop is the Gram matrices of the style it is trained for. A style is a
set of paintings with weights; its Gram targets are the weighted mean over the
set (``losses.blend_grams``).

Three modes (``TrainConfig.mode``):

* ``new``: a new network from scratch, every parameter trained;
* ``add``: new styles appended to an existing network; only the new styles'
  gamma/beta rows are trained, everything else is returned bit-for-bit
  unchanged (Dumoulin et al. 2017, section 4.2), so the old styles' outputs do
  not change at all;
* ``finetune``: every parameter of an existing network trained.

``train_step(state, batch) -> (state, metrics)`` is one pure jitted function;
the batch axis is sharded over all local devices (data parallel) with a
``Mesh`` and ``NamedSharding``, and across hosts after
``jax.distributed.initialize()``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nst_jax import cin_net
from nst_jax import image_io
from nst_jax import losses
from nst_jax import vgg
from nst_jax import weights as weights_lib
from nst_jax import winograd
from nst_jax.config import CONV_ALGORITHMS
from nst_jax.config import ConfigError

MODES = ('new', 'add', 'finetune')
LR_SCHEDULES = ('constant', 'cosine')
CHECKPOINT_FORMAT = 'nst_jax.train.v1'


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The settings of a training run; bad values name their flag.

  Loss defaults are those of ``stylize`` (jcjohnson/neural-style), so the
  trained network minimises the same objective the optimiser does.
  """
  mode: str = 'new'
  steps: int = 2000
  batch_size: int = 4
  crop_size: int = 256
  image_size: int = 512       # photos are resized to this longest side, then cropped
  style_size: int = 512       # longest side of the style images for the Gram targets
  learning_rate: float = 1e-3
  # 'cosine': the step size falls from learning_rate to 0 over lr_decay_steps
  # (0: over `steps`), then stays 0. The horizon is fixed when the run starts,
  # so raising --steps on --resume does not reshape the schedule already run.
  lr_schedule: str = 'constant'
  lr_decay_steps: int = 0
  width: int = 32
  content_weight: float = 5.0
  style_weight: float = 100.0
  tv_weight: float = 1e-3
  content_layers: tuple[str, ...] = ('relu4_2',)
  style_layers: tuple[str, ...] = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
  style_layer_weights: tuple[float, ...] | None = None
  pooling: str = 'max'
  precision: str = 'float32'  # or 'bfloat16': VGG19 and network convolutions
  conv_algorithm: str = 'auto'  # VGG19's wide layers: auto, xla or winograd (nst_jax.winograd)
  seed: int = 0

  def __post_init__(self):
    if self.mode not in MODES:
      raise ConfigError(f'--mode must be one of {", ".join(MODES)}, got {self.mode!r}')
    for name in ('steps', 'batch_size', 'crop_size', 'style_size'):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f'--{name} must be a positive integer, got {v!r}')
    if self.crop_size < 32:
      raise ConfigError(f'--crop_size must be at least 32 (VGG19 pools 5 times), '
                        f'got {self.crop_size}')
    if self.image_size < 0:
      raise ConfigError(f'--image_size must be >= 0 (0 keeps the photos\' size), '
                        f'got {self.image_size}')
    if self.width < 8 or self.width % 8:
      raise ConfigError(f'--width must be a positive multiple of 8, got {self.width}')
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ConfigError(f'--learning_rate must be a finite number > 0, '
                        f'got {self.learning_rate!r}')
    for name in ('content_weight', 'style_weight', 'tv_weight'):
      v = getattr(self, name)
      if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
        raise ConfigError(f'--{name} must be a finite number >= 0, got {v!r}')
    if self.lr_schedule not in LR_SCHEDULES:
      raise ConfigError(f'--lr_schedule must be one of {", ".join(LR_SCHEDULES)}, '
                        f'got {self.lr_schedule!r}')
    if isinstance(self.lr_decay_steps, bool) or not isinstance(self.lr_decay_steps, int) \
        or self.lr_decay_steps < 0:
      raise ConfigError(f'--lr_decay_steps must be an integer >= 0 (0: --steps), '
                        f'got {self.lr_decay_steps!r}')
    if self.lr_schedule == 'cosine' and not self.lr_decay_steps:
      object.__setattr__(self, 'lr_decay_steps', self.steps)
    if self.precision not in ('float32', 'bfloat16'):
      raise ConfigError(f'--precision must be float32 or bfloat16, got {self.precision!r}')
    if self.conv_algorithm not in CONV_ALGORITHMS:
      raise ConfigError(f'--conv_algorithm must be auto, xla or winograd, '
                        f'got {self.conv_algorithm!r}')
    if self.conv_algorithm == 'winograd' and self.precision != 'float32':
      raise ConfigError('--conv_algorithm=winograd needs --precision=float32')
    if self.pooling not in ('max', 'avg'):
      raise ConfigError(f'--pooling must be max or avg, got {self.pooling!r}')
    object.__setattr__(self, 'content_layers', tuple(self.content_layers))
    object.__setattr__(self, 'style_layers', tuple(self.style_layers))
    try:
      vgg.check_taps(self.content_layers + self.style_layers)
    except ValueError as e:
      raise ConfigError(f'--content_layers/--style_layers: {e}') from None
    if self.style_layer_weights is not None:
      w = tuple(float(x) for x in self.style_layer_weights)
      if len(w) != len(self.style_layers):
        raise ConfigError(f'--style_layer_weights has {len(w)} values for '
                          f'{len(self.style_layers)} style layers')
      if any(not math.isfinite(x) or x < 0 for x in w):
        raise ConfigError('--style_layer_weights must be finite numbers >= 0')
      object.__setattr__(self, 'style_layer_weights', w)

  @property
  def loss_spec(self) -> losses.LossSpec:
    return losses.LossSpec(content_layers=self.content_layers,
                           style_layers=self.style_layers, pooling=self.pooling,
                           compute_dtype=None if self.precision == 'float32' else 'bfloat16',
                           winograd=winograd.enabled(self.conv_algorithm, self.precision))

  def loss_weights(self) -> dict:
    return losses.default_loss_weights(self.loss_spec, self.content_weight,
                                       self.style_weight, self.tv_weight,
                                       self.style_layer_weights)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping) -> 'TrainConfig':
    d = dict(d)
    # Checkpoints from before the setting ran XLA's convolutions throughout.
    d.setdefault('conv_algorithm', 'xla')
    for k in ('content_layers', 'style_layers', 'style_layer_weights'):
      if d.get(k) is not None:
        d[k] = tuple(d[k])
    return cls(**d)


# ----------------------------------------------------------------------------
# Style targets.


@functools.partial(jax.jit, static_argnames=('layers', 'pooling', 'dtype'))
def _grams(vgg_params, image, layers, pooling, dtype):
  feats = vgg.features(vgg_params, image[None], layers, pooling=pooling,
                       compute_dtype=None if dtype is None else jnp.dtype(dtype))
  return {l: losses.gram(feats[l][0]) for l in layers}


def style_grams(vgg_params, prep: weights_lib.Preprocessing,
                styles: Sequence[Sequence[np.ndarray]],
                blend_weights: Sequence[Sequence[float]], spec: losses.LossSpec,
                style_size: int) -> dict[str, jax.Array]:
  """Gram targets of N styles, each the weighted mean over its set of paintings.

  Args:
    vgg_params: VGG19 parameters.
    prep: the weight set's preprocessing.
    styles: per style, its RGB paintings [H, W, 3] in [0, 1].
    blend_weights: per style, one weight per painting (normalised to sum 1).
    spec: layers and network settings.
    style_size: each painting is resized to this longest side first.
  Returns:
    ``{layer: [N, C, C]}``.
  """
  per_style = []
  for images, weights in zip(styles, blend_weights, strict=True):
    grams = [_grams(vgg_params, jnp.asarray(prep.apply(image_io.resize_longest(im, style_size))),
                    spec.style_layers, spec.pooling, spec.compute_dtype) for im in images]
    per_style.append(losses.blend_grams(grams, weights))
  return {l: jnp.stack([g[l] for g in per_style]) for l in spec.style_layers}


# ----------------------------------------------------------------------------
# Which parameters train.


@dataclasses.dataclass(frozen=True)
class Trainable:
  """Which parameters a mode trains: ``keys``, and for gamma/beta only rows >= ``first_row``."""
  keys: tuple[str, ...]
  first_row: int = 0


def trainable(params: Mapping[str, Any], mode: str, num_old_styles: int = 0) -> Trainable:
  """The trainable part of ``params`` for ``mode`` (see the module docstring)."""
  if mode == 'add':
    keys = tuple(sorted(k for k in params if k.endswith(('.gamma', '.beta'))))
    return Trainable(keys, num_old_styles)
  return Trainable(tuple(sorted(params)), 0)


def add_styles(params: Mapping[str, Any], num_new: int) -> dict[str, jax.Array]:
  """``params`` with ``num_new`` style rows appended to every gamma and beta.

  New rows start at the mean of the existing styles' rows (an average style,
  a better start than the identity norm for a network trained on styles).
  """
  out = {}
  for k, v in params.items():
    v = jnp.asarray(v)
    if k.endswith(('.gamma', '.beta')):
      new = jnp.broadcast_to(jnp.mean(v, axis=0, keepdims=True), (num_new, v.shape[1]))
      v = jnp.concatenate([v, new.astype(v.dtype)])
    out[k] = v
  return out


# ----------------------------------------------------------------------------
# The step.


class TrainState(NamedTuple):
  """Everything a step reads and writes (a pytree).

  ``objective`` holds the VGG19 parameters, the Gram targets and the loss
  weights: arguments of the step, never baked into the compiled program, and
  not part of a checkpoint (they are rebuilt from the style images).
  """
  step: jax.Array            # int32 scalar
  params: dict               # the full network, frozen parts included
  opt_state: Any             # optax state over the trainable parameters
  objective: dict            # {'vgg', 'grams', 'loss_weights'}


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
  """The step size at each step (``config.lr_schedule``)."""
  if config.lr_schedule == 'cosine':
    return optax.cosine_decay_schedule(config.learning_rate, config.lr_decay_steps)
  return optax.constant_schedule(config.learning_rate)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Adam (Kingma & Ba 2015), as Johnson et al. 2016 and Dumoulin et al. 2017.

  A constant rate keeps optax's plain Adam state (the layout of checkpoints
  written before schedules existed); a schedule adds its step count.
  """
  if config.lr_schedule == 'constant':
    return optax.adam(config.learning_rate)
  return optax.adam(learning_rate_schedule(config))


def init_state(params: Mapping[str, Any], objective: dict, which: Trainable,
               optimizer: optax.GradientTransformation) -> TrainState:
  """A fresh TrainState at step 0."""
  params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  opt_state = optimizer.init({k: params[k] for k in which.keys})
  return TrainState(jnp.zeros((), jnp.int32), params, opt_state, objective)


def perceptual_loss(params, objective: Mapping, images: jax.Array, styles: jax.Array, *,
                    spec: losses.LossSpec, prep: weights_lib.Preprocessing,
                    net_dtype=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Johnson et al. 2016's loss: the Gatys objective of the network's output, batch mean.

  Args:
    params: CIN network parameters.
    objective: ``{'vgg': VGG19 params, 'grams': {layer: [N, C, C]},
      'loss_weights': losses.default_loss_weights(...)}``.
    images: [B, H, W, 3] RGB content crops in [0, 1].
    styles: [B] int32, the style each crop is stylized with.
    spec: the objective's layers and settings.
    prep: the VGG19 weight set's preprocessing.
    net_dtype: compute dtype of the network (None: float32).
  Returns:
    ``(loss, terms)``: the batch means of ``losses.total_loss`` and its terms.
  """
  n = next(iter(objective['grams'].values())).shape[0]
  out = cin_net.apply(params, images, jax.nn.one_hot(styles, n, dtype=jnp.float32),
                      dtype=net_dtype)
  vgg_params = objective['vgg']
  content_feats = spec.features(vgg_params, prep.apply(images))
  targets = {
      'content': {l: jax.lax.stop_gradient(content_feats[l]) for l in spec.content_layers},
      'style': {l: objective['grams'][l][styles] for l in spec.style_layers},
  }
  per_image = jax.vmap(losses.total_loss, in_axes=(0, None, 0, None, None))
  total, terms = per_image(prep.apply(out), vgg_params, targets,
                           objective['loss_weights'], spec)
  return jnp.mean(total), {k: jnp.mean(v) for k, v in terms.items()}


def _row_mask(shape, first_row: int) -> jax.Array:
  return (jnp.arange(shape[0]) >= first_row)[:, None]


def make_train_step(config: TrainConfig, which: Trainable, prep: weights_lib.Preprocessing,
                    optimizer: optax.GradientTransformation | None = None) -> Callable:
  """Builds the jitted ``train_step(state, batch) -> (state, metrics)``.

  ``batch`` is ``{'images': [B, H, W, 3] RGB in [0, 1], 'styles': [B] int32}``.
  Parameters outside ``which`` and the frozen rows of gamma/beta are returned
  unchanged bit-for-bit (they are selected, not recomputed). ``metrics`` holds
  ``loss``, every loss term and ``grad_norm``.
  """
  optimizer = optimizer or make_optimizer(config)
  spec = config.loss_spec
  net_dtype = None if config.precision == 'float32' else jnp.bfloat16
  rows = which.first_row

  def step_fn(state: TrainState, batch: Mapping[str, jax.Array]):
    train = {k: state.params[k] for k in which.keys}
    frozen = {k: v for k, v in state.params.items() if k not in train}

    # VGG19's backward (and, on CPU, Winograd) kernels: `prepare` attaches
    # them once; for an objective built without them, here in every step.
    objective = {**state.objective, 'vgg': vgg.with_backward_kernels(
        state.objective['vgg'], winograd=spec.winograd)}

    def loss_fn(train):
      return perceptual_loss({**frozen, **train}, objective, batch['images'],
                             batch['styles'], spec=spec, prep=prep, net_dtype=net_dtype)

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(train)
    if rows:
      grads = {k: jnp.where(_row_mask(g.shape, rows), g, 0.0) for k, g in grads.items()}
    updates, opt_state = optimizer.update(grads, state.opt_state, train)
    new_train = optax.apply_updates(train, updates)
    if rows:
      new_train = {k: jnp.where(_row_mask(v.shape, rows), v, train[k])
                   for k, v in new_train.items()}
    metrics = {'loss': loss, **terms, 'grad_norm': optax.global_norm(grads)}
    new_state = TrainState(state.step + 1, {**frozen, **new_train}, opt_state,
                           state.objective)
    return new_state, metrics

  return jax.jit(step_fn, donate_argnums=())


# ----------------------------------------------------------------------------
# Devices.


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh named 'batch' over ``devices`` (default: all local)."""
  devices = np.asarray(devices if devices is not None else jax.local_devices())
  return Mesh(devices.reshape(-1), ('batch',))


def replicate(tree, mesh: Mesh):
  """Puts every leaf of ``tree`` on every device of ``mesh``."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Splits the leading (batch) axis of every array over the mesh's devices.

  Raises:
    ValueError: the batch size is not a multiple of the device count.
  """
  n = mesh.devices.size
  sharding = NamedSharding(mesh, P('batch'))
  out = {}
  for k, v in batch.items():
    if np.shape(v)[0] % n:
      raise ValueError(f'batch_size {np.shape(v)[0]} is not a multiple of the {n} devices; '
                       f'use a multiple of {n}')
    out[k] = jax.device_put(np.asarray(v), sharding)
  return out


def batch_styles(step: int, batch_size: int, style_ids: Sequence[int]) -> np.ndarray:
  """The style of each crop of batch ``step``: the trained styles in turn (round robin)."""
  ids = np.asarray(style_ids, np.int32)
  return ids[(step * batch_size + np.arange(batch_size)) % len(ids)]


# ----------------------------------------------------------------------------
# Checkpoints: one atomic npz (see the README for why not orbax).


def _checkpoint_io():
  # The npz checkpoint helpers are moving from transfer to their own module.
  try:
    from nst_jax import checkpoint
    return checkpoint
  except ImportError:
    from nst_jax import transfer
    return transfer


def checkpoint_dict(state: TrainState, meta: Mapping[str, Any]) -> dict:
  """What a checkpoint holds: JSON metadata plus params and optimizer state (leaves)."""
  arrays = {'params': state.params, 'opt_state': state.opt_state}
  return {**meta, 'format': CHECKPOINT_FORMAT, 'step': int(state.step),
          'param_keys': sorted(state.params),
          'arrays': [np.asarray(a) for a in jax.tree.leaves(arrays)]}


def save_checkpoint(path, state: TrainState, meta: Mapping[str, Any]) -> None:
  """Writes ``state`` (without the objective) and ``meta`` atomically."""
  _checkpoint_io().save_checkpoint(path, checkpoint_dict(jax.device_get(state), meta))


def read_checkpoint(path) -> tuple[dict, list[np.ndarray]]:
  """(metadata, array leaves) of a training checkpoint.

  Raises:
    ConfigError: not a readable nst_jax training checkpoint.
  """
  try:
    meta, leaves = _checkpoint_io().load_checkpoint(path)
  except ValueError as e:
    raise ConfigError(f'--resume: {e}') from None
  if meta.get('format') != CHECKPOINT_FORMAT:
    raise ConfigError(f'--resume: {path} is not an nst_jax training checkpoint')
  return meta, leaves


def restore_state(template: TrainState, leaves: Sequence[np.ndarray], step: int) -> TrainState:
  """``template`` with params and optimizer state replaced by checkpoint ``leaves``."""
  arrays = {'params': template.params, 'opt_state': template.opt_state}
  structure = jax.tree.structure(arrays)
  if structure.num_leaves != len(leaves):
    raise ConfigError(f'--resume: the checkpoint holds {len(leaves)} arrays, this run '
                      f'expects {structure.num_leaves}; was it written by another '
                      'network or mode?')
  ref = jax.tree.leaves(arrays)
  for a, b in zip(ref, leaves):
    if np.shape(a) != np.shape(b):
      raise ConfigError(f'--resume: array of shape {np.shape(b)} where this run '
                        f'expects {np.shape(a)}')
  restored = jax.tree.unflatten(
      structure, [jnp.asarray(l, dtype=jnp.asarray(a).dtype) for a, l in zip(ref, leaves)])
  return template._replace(step=jnp.asarray(step, jnp.int32), params=restored['params'],
                           opt_state=restored['opt_state'])


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Progress:
  """Handed to the progress callback every ``print_every`` steps."""
  step: int
  steps: int
  metrics: dict[str, float]
  steps_per_sec: float
  eta_seconds: float


def run(state: TrainState, train_step: Callable, batches: Iterable[tuple[int, np.ndarray]],
        *, steps: int, batch_size: int, style_ids: Sequence[int], mesh: Mesh,
        print_every: int = 10, on_progress: Callable[[Progress], None] | None = None,
        every: Sequence[tuple[int, Callable[[TrainState], None]]] = (),
        should_stop: Callable[[], bool] | None = None) -> TrainState:
  """Trains from ``state.step`` up to ``steps``.

  Args:
    state: a (replicated) TrainState.
    train_step: from ``make_train_step``.
    batches: yields ``(step, images [B, H, W, 3])`` from ``state.step`` on
      (``photo_data.PhotoBatches.iterate``).
    steps: the step to stop at.
    batch_size: crops per step.
    style_ids: the styles trained (indices into the network's styles).
    mesh: the batch axis is sharded over it.
    print_every: how often ``on_progress`` is called (and metrics fetched).
    on_progress: progress callback.
    every: ``(n, fn)`` pairs: ``fn(state)`` after every n-th step (previews,
      checkpoints).
    should_stop: polled after every step; True ends the run early.
  Returns:
    The state after the last step run.
  """
  start = int(state.step)
  t0 = None
  timed_from = start
  for step, images in batches:
    if step >= steps:
      break
    if step != int(state.step):
      raise ValueError(f'batch for step {step} given at step {int(state.step)}')
    batch = shard_batch({'images': images,
                         'styles': batch_styles(step, batch_size, style_ids)}, mesh)
    state, metrics = train_step(state, batch)
    done = step + 1
    if t0 is None:  # Time from the end of the first (compiling) step.
      jax.block_until_ready(state.params)
      t0, timed_from = time.perf_counter(), done
    if on_progress and (done % print_every == 0 or done == steps):
      m = {k: float(v) for k, v in metrics.items()}
      if not all(map(math.isfinite, m.values())):
        bad = sorted(k for k, v in m.items() if not math.isfinite(v))
        raise FloatingPointError(f'{bad[0]} became non-finite at step {done}; lower '
                                 'the learning rate or the loss weights')
      elapsed = time.perf_counter() - t0
      rate = (done - timed_from) / elapsed if elapsed > 0 and done > timed_from else 0.0
      on_progress(Progress(done, steps, m, rate,
                           (steps - done) / rate if rate > 0 else float('inf')))
    for n, fn in every:
      if n and done % n == 0 and done < steps:
        fn(state)
    if should_stop is not None and should_stop():
      break
  return state


# ----------------------------------------------------------------------------
# Putting a run together.


@dataclasses.dataclass
class Setup:
  """What ``prepare`` builds: the state, the step and which styles train."""
  state: TrainState
  train_step: Callable
  style_ids: tuple[int, ...]
  which: Trainable
  mesh: Mesh


def prepare(config: TrainConfig, styles: Sequence[Sequence[np.ndarray]],
            blend_weights: Sequence[Sequence[float]], *, base_params=None,
            weights: weights_lib.WeightSet | None = None, devices=None) -> Setup:
  """Builds the network, the Gram targets, the optimizer and the sharded state.

  Args:
    config: the run's settings (``config.mode`` picks what trains).
    styles: per style to train, its RGB paintings [H, W, 3] in [0, 1].
    blend_weights: per style, one weight per painting.
    base_params: the existing network for modes ``add`` and ``finetune``.
    weights: the VGG19 weight set (default ``weights.load()``).
    devices: the devices the batch is split over (default: all local ones).
  Returns:
    A Setup whose state is replicated over the mesh.
  Raises:
    ConfigError: the styles do not fit the base network or the mode.
  """
  if not styles:
    raise ConfigError('--styles: give at least one style')
  if config.mode == 'new':
    if base_params is not None:
      raise ConfigError('--base_net is for --mode=add or --mode=finetune; drop it for '
                        '--mode=new')
    params = cin_net.init_params(jax.random.key(config.seed), len(styles), config.width)
    num_old = 0
  else:
    if base_params is None:
      raise ConfigError(f'--mode={config.mode} needs --base_net')
    try:
      cin_net.check_params(base_params, '--base_net')
    except ValueError as e:
      raise ConfigError(str(e)) from None
    num_old = cin_net.num_styles_of(base_params)
    if config.mode == 'add':
      params = add_styles(base_params, len(styles))
    else:
      if len(styles) != num_old:
        raise ConfigError(f'--styles names {len(styles)} styles but --base_net has '
                          f'{num_old}; --mode=finetune trains every style of the network, '
                          'give one --styles entry per style in order')
      params, num_old = dict(base_params), 0
  ws = weights or weights_lib.load()
  spec = config.loss_spec
  grams = style_grams(ws.params, ws.preprocessing, styles, blend_weights, spec,
                      config.style_size)
  if num_old:  # Old styles have no targets here and are never in a batch.
    grams = {l: jnp.concatenate([jnp.zeros((num_old,) + g.shape[1:], g.dtype), g])
             for l, g in grams.items()}
  # VGG19 is frozen: its backward (and, on CPU, Winograd) kernels are
  # attached once here, not in every step (~470 ms per step on 2 cores).
  vgg_params = vgg.with_backward_kernels_jitted(jax.device_put(ws.params),
                                                winograd=spec.winograd)
  objective = {'vgg': vgg_params, 'grams': grams,
               'loss_weights': config.loss_weights()}
  which = trainable(params, config.mode, num_old)
  optimizer = make_optimizer(config)
  mesh = make_mesh(devices)
  if config.batch_size % mesh.devices.size:
    raise ConfigError(f'--batch_size={config.batch_size} is not a multiple of the '
                      f'{mesh.devices.size} devices; use a multiple of {mesh.devices.size}')
  state = replicate(init_state(params, objective, which, optimizer), mesh)
  step = make_train_step(config, which, ws.preprocessing, optimizer)
  style_ids = tuple(range(num_old, num_old + len(styles)))
  return Setup(state, step, style_ids, which, mesh)


def stylize_preview(params, photos: jax.Array, style_ids: Sequence[int]) -> np.ndarray:
  """Each photo [P, H, W, 3] in every style of ``style_ids``: [P, len(style_ids), H, W, 3]."""
  n = cin_net.num_styles_of(params)
  outs = [np.asarray(_preview_apply(params, photos, jnp.eye(n)[s])) for s in style_ids]
  return np.stack(outs, axis=1)


@jax.jit
def _preview_apply(params, photos, weights):
  return cin_net.apply(params, photos, weights)
