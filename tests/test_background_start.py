"""tpu_harness._infeed.background_start: the infeed starts on a thread of
its own; every other use waits for it and raises what it raised."""

import threading

import pytest
import tensorflow as tf

from tpu_harness._infeed import background_start

WAIT_SECS = 60


class _FakeInfeed:
  """An infeed whose start blocks until `release` is set; records calls."""

  def __init__(self, fail=None):
    self.calls = []
    self.release = threading.Event()
    self.starting = threading.Event()
    self._fail = fail

  @property
  def element_spec(self):
    return "spec"

  @property
  def streams(self):
    self.calls.append("streams")
    return True

  def dequeue(self):
    return "element"

  def start(self, session):
    self.starting.set()
    assert self.release.wait(WAIT_SECS)
    self.calls.append(("start", session))
    if self._fail is not None:
      raise self._fail

  def request(self, steps):
    self.calls.append(("request", steps))

  def wait(self):
    self.calls.append("wait")
    return 3

  def stop(self):
    self.calls.append("stop")

  def raise_if_failed(self):
    self.calls.append("raise_if_failed")


class _Listener(tf.compat.v1.train.CheckpointSaverListener):

  def __init__(self, infeed):
    self.infeed = infeed
    self.calls = []

  def begin(self):
    self.calls.append("begin")

  def before_save(self, session, global_step_value):
    # The infeed's start is over by now.
    self.calls.append(("before_save", global_step_value,
                       list(self.infeed.calls)))

  def after_save(self, session, global_step_value):
    self.calls.append(("after_save", global_step_value))

  def end(self, session, global_step_value):
    self.calls.append(("end", global_step_value))


def test_start_returns_before_the_infeed_started_and_uses_wait_for_it():
  inner = _FakeInfeed()
  infeed = background_start.BackgroundStart(inner, first_request=4)
  infeed.start("session")
  assert inner.starting.wait(WAIT_SECS)
  assert inner.calls == []  # Still starting: start() did not wait.
  waited = threading.Thread(target=infeed.wait)
  waited.start()
  waited.join(0.2)
  assert waited.is_alive()  # wait() waits for the start.
  inner.release.set()
  waited.join(WAIT_SECS)
  assert inner.calls == [("start", "session"), ("request", 4), "wait"]


@pytest.mark.parametrize("use", [
    lambda infeed: infeed.request(2),
    lambda infeed: infeed.wait(),
    lambda infeed: infeed.raise_if_failed(),
    lambda infeed: infeed.streams,
    lambda infeed: infeed.started(),
])
def test_what_the_start_raised_is_raised_by_the_first_use_once(use):
  inner = _FakeInfeed(fail=ValueError("bad input"))
  inner.release.set()
  infeed = background_start.BackgroundStart(inner)
  infeed.start("session")
  with pytest.raises(ValueError, match="bad input"):
    use(infeed)
  infeed.started()  # Raised once.
  assert inner.calls == [("start", "session")]  # Not used after it.


def test_stop_waits_for_the_start_and_logs_its_error_instead(caplog):
  inner = _FakeInfeed(fail=ValueError("bad input"))
  infeed = background_start.BackgroundStart(inner)
  infeed.start("session")
  inner.release.set()
  infeed.stop()  # Does not raise: stopping follows the error that ended it.
  assert inner.calls == [("start", "session"), "stop"]
  assert "bad input" in caplog.text


def test_a_listener_after_the_start_saves_once_it_is_over():
  inner = _FakeInfeed()
  infeed = background_start.BackgroundStart(inner, first_request=2)
  listener = _Listener(inner)
  wrapped = background_start.after_start(listener, infeed)
  wrapped.begin()
  infeed.start("session")
  saving = threading.Thread(target=wrapped.before_save, args=(None, 7))
  saving.start()
  saving.join(0.2)
  assert saving.is_alive()
  inner.release.set()
  saving.join(WAIT_SECS)
  wrapped.after_save(None, 7)
  wrapped.end(None, 7)
  assert listener.calls == [
      "begin", ("before_save", 7, [("start", "session"), ("request", 2)]),
      ("after_save", 7), ("end", 7)]


def test_a_save_the_listener_needs_no_start_for_does_not_wait():
  inner = _FakeInfeed()
  infeed = background_start.BackgroundStart(inner)
  listener = _Listener(inner)
  wrapped = background_start.after_start(
      listener, infeed, needs_start=lambda step: step != 7)
  infeed.start("session")
  assert inner.starting.wait(WAIT_SECS)
  wrapped.before_save(None, 7)  # The start is still blocked.
  assert listener.calls == [("before_save", 7, [])]
  saving = threading.Thread(target=wrapped.before_save, args=(None, 8))
  saving.start()
  saving.join(0.2)
  assert saving.is_alive()  # Step 8 waits for the start.
  inner.release.set()
  saving.join(WAIT_SECS)
  assert listener.calls[-1] == ("before_save", 8, [("start", "session")])


def test_a_failed_start_is_raised_before_the_save():
  inner = _FakeInfeed(fail=RuntimeError("restore failed"))
  inner.release.set()
  infeed = background_start.BackgroundStart(inner)
  listener = _Listener(inner)
  infeed.start("session")
  with pytest.raises(RuntimeError, match="restore failed"):
    background_start.after_start(listener, infeed).before_save(None, 0)
  assert listener.calls == []


def test_the_graph_side_goes_straight_through():
  inner = _FakeInfeed()
  infeed = background_start.BackgroundStart(inner)
  assert infeed.element_spec == "spec"
  assert infeed.dequeue() == "element"
  assert inner.calls == []
