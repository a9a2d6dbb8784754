"""What of a TensorFlow error message to show in one line."""

from __future__ import annotations

import re

# Lines of a TF graph-execution error that are not its message: the
# wrapper's first line, where the failing op was defined (a Python stack),
# its node's name.
_NOT_THE_MESSAGE = re.compile(
    r"^(Graph execution error:|Detected at node |Node: |File \"|"
    r"\[\[\{\{node )")


def first_line(message: str) -> str:
  """The first line of a TF error message that says something.

  Args:
    message: a TF error's message (`tf.errors.OpError.message`).

  Returns:
    Its first non-blank line that is not the wrapper's 'Graph execution
    error:', the stack where the op was defined, or the node name lines
    around the message; else its first non-blank line; else "".
  """
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  useful = [line for line in lines if not _NOT_THE_MESSAGE.match(line)]
  return (useful or lines or [""])[0]
