"""`python -m tpu_harness PROGRAM.py [ARGS...]`: a TPUEstimator program as is.

Calls `tpu_harness.install()` (TensorFlow's estimator names become
`tpu_harness.estimator`), then runs PROGRAM.py as `python PROGRAM.py
ARGS...` would: as `__main__`, with `sys.argv` `[PROGRAM.py, ARGS...]`
(absl's `app.run` parses it) and the program's directory first on
`sys.path`. Its exit status is the program's (`sys.exit(n)`, an uncaught
exception's 1). Everything after PROGRAM.py goes to the program.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import List, Optional

import tpu_harness

USAGE = "usage: python -m tpu_harness PROGRAM.py [ARGS...]"
_HELP = f"""{USAGE}

Runs the Python program PROGRAM.py as `python PROGRAM.py ARGS...` would,
after tpu_harness.install(): `tf.compat.v1.estimator`, `tf.estimator` and
`tensorflow_estimator` are tpu_harness.estimator, so a TPUEstimator program
runs unedited. ARGS go to the program. MIGRATING.md says what is covered.
"""
# What a bad command line exits with (as argparse's usage errors).
USAGE_ERROR = 2


def _usage_error(message: str) -> int:
  """Prints the usage line and `message` to stderr; returns USAGE_ERROR."""
  sys.stderr.write(f"{USAGE}\npython -m tpu_harness: error: {message}\n")
  return USAGE_ERROR


def main(argv: Optional[List[str]] = None) -> int:
  """Runs the program `argv` names after `tpu_harness.install()`.

  Args:
    argv: `[PROGRAM.py, ARGS...]` (default: `sys.argv[1:]`); `-h` or
      `--help` alone prints the help.

  Returns:
    0 once the program has run to its end; USAGE_ERROR (2) for a bad
    command line (no program, an option before it, a program that is not a
    file), with the usage line and the reason on stderr.

  Raises:
    SystemExit: the program exited (`sys.exit`, absl's `app.run`), with its
      status.
    Exception: whatever the program raised and did not catch.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv:
    return _usage_error("the argument PROGRAM is missing: name the Python "
                        "file to run.")
  program, args = argv[0], argv[1:]
  if program in ("-h", "--help"):
    sys.stdout.write(_HELP)
    return 0
  if program.startswith("-"):
    return _usage_error(f"the argument PROGRAM is {program!r}, an option: "
                        f"name the Python file to run first; its arguments "
                        f"follow it.")
  if not os.path.isfile(program):
    reason = ("is a directory" if os.path.isdir(program)
              else "does not exist")
    return _usage_error(f"the argument PROGRAM, {program!r}, {reason}: name "
                        f"the Python file to run.")

  tpu_harness.install()
  sys.argv = [program, *args]
  # As `python PROGRAM.py`: the program's directory, not ours or the working
  # directory, is where its own imports are found first.
  sys.path[0] = os.path.dirname(os.path.realpath(program))
  runpy.run_path(program, run_name="__main__")
  return 0


if __name__ == "__main__":
  sys.exit(main())
