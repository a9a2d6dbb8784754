"""One line per log message.

TensorFlow's logger ("tensorflow") gets a handler of its own, printing
`INFO:tensorflow:...`, when it is created while the root logger has none;
its records still propagate to the root, where absl's handler (installed
later, by `absl.app.run`) prints them again in absl's format. Once the root
logger has a handler, TF's own is redundant: `one_line_per_message` removes
it, so every message is printed once, in the root's (absl's) format.
"""

from __future__ import annotations

import logging


def one_line_per_message() -> None:
  """Removes the handler TF added to its logger, if the root logger has a
  handler of its own and TF's records reach it."""
  tf_logger = logging.getLogger("tensorflow")
  if not logging.getLogger().handlers or not tf_logger.propagate:
    return
  for handler in list(tf_logger.handlers):
    formatter = handler.formatter
    if (type(handler) is logging.StreamHandler  # pylint: disable=unidiomatic-typecheck
        and formatter is not None and formatter._fmt == logging.BASIC_FORMAT):  # pylint: disable=protected-access
      tf_logger.removeHandler(handler)
