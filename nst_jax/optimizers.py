"""Optimizers by name: ``StyleConfig.optimizer`` -> an optax GradientTransformation.

A new optimizer is an optax transformation (the maths in its own module, as
``lbfgs`` holds our L-BFGS) plus one line in ``make_optimizer`` naming it;
``config.OPTIMIZERS`` lists the names the flag accepts.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax

from nst_jax import lbfgs
from nst_jax.config import ConfigError
from nst_jax.config import StyleConfig


def optimizer_key(config: StyleConfig) -> tuple:
  """The settings that make the optimizer's program: (name, learning rate, history, its
  dtype, the L-BFGS direction)."""
  return (config.optimizer, config.learning_rate, config.lbfgs_history,
          config.lbfgs_history_dtype, config.lbfgs_direction)


def resolved(config: StyleConfig) -> StyleConfig:
  """``config`` with the backend-dependent choice made explicit
  (``lbfgs_direction='auto'`` becomes what it means here), so that a
  checkpoint written on a GPU resumes on a CPU with the same optimizer state."""
  if config.lbfgs_direction != 'auto':
    return config
  return dataclasses.replace(config, lbfgs_direction=lbfgs.resolve_direction(
      'auto', config.lbfgs_history_dtype))


def make_optimizer(config: StyleConfig) -> optax.GradientTransformation:
  """The optax transformation named by ``config.optimizer``."""
  return optimizer_from_key(optimizer_key(config))


def optimizer_from_key(key: tuple) -> optax.GradientTransformation:
  """``make_optimizer`` from ``optimizer_key(config)`` (hashable: a cache key)."""
  name, learning_rate, history, history_dtype, direction = key
  lr = learning_rate if learning_rate is not None else 10.0 if name == 'adam' else 1.0
  if name == 'lbfgs':
    return lbfgs.scale_by_torch_lbfgs(history, lr, history_dtype=history_dtype,
                                      direction=direction)
  if name == 'lbfgs_linesearch':
    return optax.lbfgs(learning_rate=learning_rate, memory_size=history)
  if name == 'adam':
    return optax.adam(lr)
  return getattr(optax, name[len('optax:'):])(lr)


def check_optimizer(config: StyleConfig) -> None:
  """Refuses an ``optax:NAME`` that is not an optimizer of one image.

  Tracing one step on a tiny abstract image (nothing is computed) catches
  ``optax:chain`` or ``optax:lbfgs`` (which needs the loss function).
  """
  if not config.optimizer.startswith('optax:'):
    return

  def step(x):
    optimizer = make_optimizer(config)
    return optimizer.update(x, optimizer.init(x), x)

  try:
    jax.eval_shape(step, jax.ShapeDtypeStruct((8, 8, 3), np.float32))
  except Exception as e:  # pylint: disable=broad-except
    detail = (str(e).strip().splitlines() or [''])[0][:160] or type(e).__name__
    raise ConfigError(
        f'`optimizer` {config.optimizer!r} cannot optimise an image ({type(e).__name__}: '
        f'{detail}); use lbfgs, lbfgs_linesearch, adam, or an optax optimizer that takes a '
        'learning rate, such as optax:sgd or optax:adamw') from None
