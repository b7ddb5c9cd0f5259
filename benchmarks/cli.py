"""The command line every benchmark module shares: flags from its DEFAULTS, run, report.

A benchmark module defines ``DEFAULTS`` (every setting of ``run``), ``run(flags)
-> dict`` (JSON-able results) and ``markdown(results) -> str``, and ends with

    if __name__ == '__main__':
      cli.main(DEFAULTS, run, markdown, {'size': 'Longest side, px.', ...})

which defines one absl flag per named setting (its type from the default:
bool, int, float, list or string), plus the JSON flag; runs; writes the JSON
atomically when asked; and prints the markdown. ``scripts/benchmark.py
--mode=NAME`` calls the same ``run`` and ``markdown``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping


def _define(flags, name: str, default, help_text: str) -> None:
  # Declared as the main program's flags (absl names it by sys.argv[0]), so
  # that --help lists them, as it did when each module defined its own.
  kw = {'module_name': sys.argv[0]}
  if isinstance(default, bool):
    flags.DEFINE_bool(name, default, help_text, **kw)
  elif isinstance(default, int):
    flags.DEFINE_integer(name, default, help_text, **kw)
  elif isinstance(default, float):
    flags.DEFINE_float(name, default, help_text, **kw)
  elif isinstance(default, (list, tuple)):
    flags.DEFINE_list(name, [str(v) for v in default], help_text, **kw)
  else:
    flags.DEFINE_string(name, default, help_text, **kw)


def _value(default, value):
  """A list flag's strings as ints when the default list holds ints."""
  if isinstance(default, (list, tuple)) and default and all(
      isinstance(v, int) and not isinstance(v, bool) for v in default):
    return [int(v) for v in value]
  return value


def write_json(path: str, results: Mapping) -> None:
  """``results`` as indented JSON at ``path``, written to a temporary name first."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as fh:
    fh.write(json.dumps(results, indent=1) + '\n')
  os.replace(tmp, path)


def main(defaults: Mapping, run: Callable[[dict], dict], markdown: Callable[[dict], str],
         flag_help: Mapping[str, str], *, json_flag: str = 'json',
         json_default: str | None = None) -> None:
  """Defines the flags named in ``flag_help``, then runs the benchmark (absl ``app.run``)."""
  from absl import app
  from absl import flags

  for name, help_text in flag_help.items():
    _define(flags, name, defaults[name], help_text)
  _define(flags, json_flag, json_default, 'Also write the results here as JSON (empty: do not).')

  def _main(argv):
    del argv
    values = {name: _value(defaults[name], flags.FLAGS[name].value) for name in flag_help}
    results = run(values)
    path = flags.FLAGS[json_flag].value
    if path:
      write_json(path, results)
    print(markdown(results))

  app.run(_main)
