"""InfeedHook: an infeed started with each session, stopped at its end."""

import tensorflow as tf

from tpu_harness._infeed.protocol import InfeedHook


class _Recorder:
  """An `Infeed` recording the calls it gets."""

  element_spec = None
  streams = False

  def __init__(self):
    self.calls = []

  def start(self, session):
    self.calls.append(("start", session))

  def request(self, steps):
    self.calls.append(("request", steps))

  def stop(self):
    self.calls.append(("stop",))


def test_starts_with_each_session_and_stops_at_the_end():
  infeed = _Recorder()
  with tf.Graph().as_default():
    tf.compat.v1.train.create_global_step()
    with tf.compat.v1.train.MonitoredSession(hooks=[InfeedHook(infeed)]):
      assert [name for name, *_ in infeed.calls] == ["start"]
      assert infeed.calls[0][1] is not None
  assert [name for name, *_ in infeed.calls] == ["start", "stop"]
