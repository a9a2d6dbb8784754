"""Running an absl entry point both as `python -m scripts.X` and as a
console script (whose `__main__` is a generated wrapper)."""

import sys
from typing import Callable

from absl import app
from absl import flags


def run(main: Callable, module_name: str) -> None:
  """`app.run(main)`, with `module_name`'s flags as the main module's key
  flags, so `--help`/`--helpshort` list them under a console script too."""
  # absl's --helpshort lists the key flags of the module named sys.argv[0].
  main_module = sys.argv[0] if sys.argv else "__main__"
  known = set(flags.FLAGS.get_key_flags_for_module(main_module))
  for flag in flags.FLAGS.get_key_flags_for_module(module_name):
    if flag not in known:
      flags.FLAGS.register_key_flag_for_module(main_module, flag)
  app.run(main)
