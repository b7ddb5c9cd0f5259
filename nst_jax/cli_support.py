"""What the scripts share: flags, files and messages. No computation lives here.

- Flags: ``define_style_flags`` makes one flag per ``StyleConfig`` field (name,
  type, default, help and help group from the field), so a new setting is a
  new field and nothing else; ``config_from_flags`` reads them back. ``run``
  is ``app.run`` with a grouped ``--help`` led by the script's examples.
- Files: images (with the decompression-bomb override), checkpoints of an
  interrupted run, the rescue of a result that could not be written.
- Messages: ``say`` (``nst_jax: ...``), ``fail`` (``error: ...``) and one-line
  warnings, all plain lines on stderr; absl log lines only with --verbosity.
  Library errors name arguments in backticks (`image_size`); ``fail`` shows
  them as the flags (--image_size).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from absl import app
from absl import flags
from absl import logging as absl_logging
from PIL import Image

from nst_jax import checkpoint
from nst_jax import config as config_lib
from nst_jax import image_io
from nst_jax import torch_pickle
from nst_jax import weights as weights_lib

FLAGS = flags.FLAGS

# Errors that are the user's to fix: printed as one line, exit status 1.
USER_ERRORS = (config_lib.ConfigError, image_io.ImageError, weights_lib.WeightsError,
               torch_pickle.TorchFileError, checkpoint.CheckpointError)

CACHE_DIR_ENV = 'NST_JAX_CACHE_DIR'
# Largest image (in pixels) the scripts decode; Pillow's default guards against
# decompression bombs (about 89 Mpx, refused outright over twice that). Set it
# to read a larger trusted file, or lower it (the tests do) to exercise the
# check with small files.
MAX_PIXELS_ENV = 'NST_JAX_MAX_IMAGE_PIXELS'
INPUTS = 'inputs and output'
# The arguments that ask for help instead of a run.
HELP_ARGS = ('-h', '--help', '-help', '--helpshort', '-?')


# ----------------------------------------------------------------------------
# Messages.


def flag_message(text: str) -> str:
  """A library message with each `argument` that is a flag shown as --argument."""
  return re.sub(r'`([A-Za-z0-9_]+)`', lambda m: f'--{m[1]}' if m[1] in FLAGS else m[1],
                ' '.join(str(text).split()))


def say(message: str) -> None:
  """Prints ``nst_jax: MESSAGE`` on stderr: the scripts' voice."""
  print(f'nst_jax: {message}', file=sys.stderr, flush=True)


def fail(message) -> int:
  """Prints ``error: MESSAGE`` as one line on stderr; returns exit status 1."""
  print(f'error: {flag_message(message)}', file=sys.stderr, flush=True)
  return 1


def _show_warning(message, category, filename, lineno, file=None, line=None):
  del category, filename, lineno, line
  print(f'warning: {flag_message(message)}', file=file or sys.stderr, flush=True)


def show_warnings_on_one_line() -> None:
  """Python warnings print as ``warning: MESSAGE`` (no source file or line)."""
  warnings.showwarning = _show_warning


# ----------------------------------------------------------------------------
# Flags.


def define_style_flags() -> None:
  """Defines one flag per ``StyleConfig`` field, from the field's type and metadata."""
  for f in dataclasses.fields(config_lib.StyleConfig):
    help_, default = f.metadata['help'], f.default
    if 'choices' in f.metadata:
      flags.DEFINE_enum(f.name, default, list(f.metadata['choices']), help_)
    elif f.type.startswith('tuple'):
      flags.DEFINE_list(f.name, None if default is None else [str(v) for v in default], help_)
    else:
      define = {'int': flags.DEFINE_integer, 'bool': flags.DEFINE_bool,
                'str': flags.DEFINE_string}.get(f.type, flags.DEFINE_float)
      define(f.name, default, help_)


def config_from_flags(**overrides) -> config_lib.StyleConfig:
  """Builds a validated StyleConfig from the parsed flags (``overrides`` win)."""
  kw = {}
  for f in dataclasses.fields(config_lib.StyleConfig):
    value = FLAGS[f.name].value
    if f.type.startswith('tuple') and value is not None:
      kind, what = ((int, 'integers') if 'int' in f.type else (float, 'numbers')
                    if 'float' in f.type else (str, 'names'))
      try:
        value = tuple(kind(v) for v in value)
      except ValueError:
        raise config_lib.ConfigError(f'--{f.name} must be comma-separated {what}, got '
                                     f'{",".join(value)!r}') from None
    kw[f.name] = value
  return config_lib.StyleConfig(**{**kw, **overrides})


def help_text(examples: str, groups: Mapping[str, Sequence[str]]) -> str:
  """``--help``: the examples, then the flags by group (the script's, then StyleConfig's)."""
  groups = {**{k: list(v) for k, v in groups.items()}, **{g: [] for g in config_lib.GROUPS}}
  for f in dataclasses.fields(config_lib.StyleConfig):
    groups.setdefault(f.metadata['group'], []).append(f.name)
  lines = [textwrap.dedent(examples).strip(), '']
  for group, names in groups.items():
    lines.append(f'{group}:')
    for name in names:
      flag = FLAGS[name]
      default = '' if flag.default is None else f'={flag.default_as_str.strip(chr(39))}'
      lines += textwrap.wrap(f'--{name}{default}: {flag.help}', 88, initial_indent='  ',
                             subsequent_indent='      ')
    lines.append('')
  return '\n'.join(lines + ['Every flag, absl\'s included: --helpfull.'])


def grouped_help(doc: str, groups: Sequence[tuple[str, Sequence[str]]], footer: str) -> str:
  """``--help`` of a script that defines its own absl flags: ``doc``, then the flags by group.

  A default is shown as it would be typed (a list comma-separated) unless
  the flag is unset by default (None, False or an empty list). ``footer``
  ends the text.
  """
  lines = [doc.strip(), '', 'Flags:']
  for title, names in groups:
    lines += ['', f'  {title}:']
    for name in names:
      flag = FLAGS[name]
      value = (','.join(map(str, flag.default)) if isinstance(flag.default, list)
               else flag.default)
      default = '' if flag.default in (None, False, []) else f' (default: {value})'
      lines.append(textwrap.fill(f'--{name}: {flag.help}{default}', width=100,
                                 initial_indent='    ', subsequent_indent='        '))
  lines += ['', footer]
  return '\n'.join(lines)


def run(main: Callable[[list[str]], int], examples: str,
        groups: Mapping[str, Sequence[str]]) -> None:
  """``app.run(main)`` with a grouped ``--help``, one-line warnings and quiet logging."""
  if any(a in HELP_ARGS for a in sys.argv[1:]):
    print(help_text(examples, groups))
    sys.exit(0)

  def quiet_main(argv):
    if not FLAGS['verbosity'].present:  # absl log lines are debug detail.
      absl_logging.set_verbosity(absl_logging.ERROR)
    show_warnings_on_one_line()
    if len(argv) > 1:
      return fail(f'unexpected arguments {argv[1:]}; all options are --flags')
    try:
      return main(argv)
    except USER_ERRORS as e:
      return fail(str(e))

  app.run(quiet_main)



def flags_parser(help_text: Callable[[], str] | None = None
                 ) -> Callable[[list[str]], list[str]]:
  """absl's flag parser for ``app.run(main, flags_parser=...)``, a bad flag one error line.

  Args:
    help_text: when given, ``--help`` (or any of ``HELP_ARGS``) prints
      ``help_text()`` and exits 0, instead of absl's own listing.
  """
  def parse(argv: list[str]) -> list[str]:
    if help_text is not None and any(a in HELP_ARGS for a in argv[1:]):
      print(help_text())
      sys.exit(0)
    try:
      return FLAGS(argv)
    except flags.Error as e:
      sys.exit(fail(f'{e}; see --help'))

  return parse


# ----------------------------------------------------------------------------
# Files.


def apply_env_overrides() -> None:
  """Applies ``$NST_JAX_MAX_IMAGE_PIXELS`` to Pillow's decompression-bomb limit."""
  value = os.environ.get(MAX_PIXELS_ENV)
  if not value:
    return
  limit = int(value) if value.isdigit() else 0
  if limit <= 0:
    raise config_lib.ConfigError(f'${MAX_PIXELS_ENV} must be a positive number of pixels, '
                                 f'got {value!r}; unset it for the default')
  Image.MAX_IMAGE_PIXELS = limit


def cache_dir() -> Path:
  """``$NST_JAX_CACHE_DIR`` or ``~/.cache/nst_jax``."""
  return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / '.cache' / 'nst_jax')


def enable_compilation_cache() -> None:
  """JAX's persistent compilation cache in ``cache_dir()/jax``: a size seen before loads."""
  import jax
  path = cache_dir() / 'jax'
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return  # An unwritable cache only costs compile time.
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def load_image(path, what: str) -> np.ndarray:
  """``image_io.load_image``, with the way to lift the bomb limit from the shell."""
  try:
    return image_io.load_image(path, what=what)
  except image_io.ImageError as e:
    if 'decompression bomb' in str(e):
      raise image_io.ImageError(f'{e} (set {MAX_PIXELS_ENV}=PIXELS)') from None
    raise


def save_run(path, state, content: np.ndarray, styles: Sequence[np.ndarray]) -> None:
  """Writes a checkpoint: the ``transfer.RunState`` and the run's input images.

  With its inputs inside, a checkpoint resumes without the original files.
  """
  saved = state.to_dict()
  saved['arrays'] += [content, *styles]
  checkpoint.save_checkpoint(path, {**saved, 'num_styles': len(styles)})


def load_run(path):
  """Reads ``save_run``'s file: (``transfer.RunState``, content, styles).

  Raises:
    ConfigError: naming ``--resume`` for a missing, damaged or foreign file.
  """
  from nst_jax import transfer  # Imports JAX; the flags are checked first.
  shown = f'--resume {str(path)!r}'
  if not os.path.isfile(path):
    what = 'is a directory' if os.path.isdir(path) else 'not found'
    raise config_lib.ConfigError(f'{shown} {what}; pass the .ckpt.npz file that an '
                                 'interrupted run named when it stopped')
  try:
    meta, arrays = checkpoint.load_checkpoint(path)
    n = int(meta['num_styles']) + 1
    return transfer.RunState.from_dict(meta, arrays[:-n]), arrays[-n], arrays[-n + 1:]
  except checkpoint.CheckpointError as e:
    raise config_lib.ConfigError(f'--resume {e}') from None
  except (KeyError, TypeError, ValueError, IndexError) as e:
    raise config_lib.ConfigError(f'{shown} is not a readable nst_jax checkpoint '
                                 f'({type(e).__name__}: {e}); pass the .ckpt.npz file written '
                                 'when a run was interrupted') from None


def check_writable_file(path, flag: str) -> None:
  """Checks, creating nothing, that a file can be written at ``path`` (any extension).

  Raises:
    ConfigError: ``path`` is a directory, or the nearest existing folder above
      it is a file or not writable; the message names ``--flag``.
  """
  shown = f'--{flag} {str(path)!r}'
  target = os.path.abspath(path)
  if os.path.isdir(target):
    raise config_lib.ConfigError(f'{shown} is a directory; pass a file name')
  ancestor = os.path.dirname(target)
  while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise config_lib.ConfigError(f'{shown}: {ancestor!r} is a file, not a folder; choose '
                                 'another path')
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise config_lib.ConfigError(f'{shown}: the folder {ancestor!r} is not writable; choose a '
                                 'folder you can write to')


def check_weights_name(name: str) -> None:
  """Refuses at once a ``--weights`` that names no file and no known weight set."""
  names = ', '.join(weights_lib.SOURCES)
  if name.endswith('.safetensors') or os.sep in name:  # As weights.load tells them apart.
    if not os.path.isfile(name):
      what = 'is a directory' if os.path.isdir(name) else 'not found'
      raise weights_lib.WeightsError(
          f'--weights {name!r} {what}; pass a .safetensors file written by '
          f'scripts/port_weights.py, or one of the names {names}')
  elif name not in weights_lib.SOURCES:
    raise weights_lib.WeightsError(f'--weights: unknown weight set {name!r}; choose one of '
                                   f'{names} or give a .safetensors path')


def load_weights(name: str) -> weights_lib.WeightSet:
  """``weights.load`` with ``--weights`` named in the error."""
  check_weights_name(name)
  try:
    return weights_lib.load(name)
  except weights_lib.WeightsError as e:
    raise weights_lib.WeightsError(f'--weights {name!r}: {e}') from None


def save_or_rescue(path, image: np.ndarray) -> str:
  """Saves ``image`` at ``path``; if that fails, in ``cache_dir()/rescued`` instead.

  A long run's result should not be lost to a full disk or a folder that
  went away while it ran.

  Returns:
    ``path``.
  Raises:
    image_io.ImageError: ``path`` could not be written; the message says
      where the image was saved instead, if anywhere.
  """
  try:
    image_io.save_image(path, image)
    return os.fspath(path)
  except image_io.ImageError as e:
    error = e
  rescue = cache_dir() / 'rescued' / f'{Path(path).stem}-{time.strftime("%Y%m%d-%H%M%S")}.png'
  try:
    image_io.save_image(rescue, image)
  except image_io.ImageError:
    raise error from None
  raise image_io.ImageError(f'{error}; the image was saved to {str(rescue)!r} '
                            'instead') from None
