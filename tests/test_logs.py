"""logs: one line per message once the root logger prints them."""

import logging

import pytest

from tpu_harness._run import logs


@pytest.fixture
def loggers():
  tf_logger = logging.getLogger("tensorflow")
  root = logging.getLogger()
  saved = (list(tf_logger.handlers), list(root.handlers))
  yield tf_logger, root
  tf_logger.handlers[:], root.handlers[:] = saved


def _tf_own_handler():
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT, None))
  return handler


def test_tf_handler_is_removed_when_the_root_prints(loggers):
  tf_logger, root = loggers
  own, users = _tf_own_handler(), logging.StreamHandler()
  tf_logger.handlers[:] = [own, users]
  root.handlers[:] = [logging.StreamHandler()]
  logs.one_line_per_message()
  assert tf_logger.handlers == [users]  # Only TF's own handler goes.


def test_tf_handler_stays_when_nothing_else_prints(loggers):
  tf_logger, root = loggers
  own = _tf_own_handler()
  tf_logger.handlers[:] = [own]
  root.handlers[:] = []
  logs.one_line_per_message()
  assert tf_logger.handlers == [own]
