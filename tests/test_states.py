"""StateLog: which iterator states a host infeed reads for saves, and which
one a save at a given element takes."""

import pytest

from tpu_harness._infeed import states


class _FakeIterator:
  """Stands for the iterator: its state is the elements read so far."""

  def __init__(self):
    self.reads = 0
    self.serialized = []  # The reads at which the state was read.

  def read_state(self, session):
    del session  # Unused.
    self.serialized.append(self.reads)
    return f"state@{self.reads}".encode()


def _fill(log, iterator, asked, expected):
  """One fill of `asked` elements with `expected(first, last)`."""
  log.fill_started(None, iterator.reads, asked, expected)
  iterator.reads += asked
  log.fill_ended(iterator.reads)


@pytest.mark.parametrize(
    "restored, first_fill, reads, found", [
        # The state at element 0 is known: the pass's start (nothing
        # restored) or the state restored, whether a save is expected in
        # the first fill or not. Not read.
        (None, True, [], (0, states.PASS_START, 0)),
        (None, None, [], (0, states.PASS_START, 0)),
        (b"restored", True, [], (0, b"restored", 7)),
        # A later fill where a save is expected: the state at its start is
        # read.
        (None, False, [10], (10, b"state@10", 10)),
        # None expected there: nothing read; the state at 0 stays.
        (b"restored", None, [], (0, b"restored", 7)),
    ], ids=["new pass, save expected", "new pass, no save expected",
            "restored", "second fill, save expected",
            "second fill, no save expected"])
def test_a_fill_reads_the_state_at_its_start_only_when_needed(
    restored, first_fill, reads, found):
  iterator = _FakeIterator()
  log = states.StateLog(iterator.read_state)
  log.begin(taken=7 if restored else 0, state=restored)
  # `first_fill`: the save expected in the first fill (True) or the second
  # (False); None: in neither.
  _fill(log, iterator, 10, lambda first, last: first_fill is True)
  _fill(log, iterator, 10, lambda first, last: first_fill is False)
  assert iterator.serialized == reads
  # A save after 15 elements: the newest state held, then the elements
  # after it skipped.
  assert log.state_at(None, 15) == found


def test_a_save_before_the_first_fill_short_of_its_element_reads_there():
  # At a session's start whole chunks were dropped (12 elements); the first
  # fill reads the 13th and drops it too. A save of the start step (13
  # elements trained on) may come before that fill starts.
  iterator = _FakeIterator()
  log = states.StateLog(iterator.read_state)
  log.begin(taken=0, state=None)
  iterator.reads = 12
  log.fill_ended(12)
  assert log.state_at(None, 13) == (12, b"state@12", 12)
  # The fill then finds the state at its start held: not read again.
  _fill(log, iterator, 3, lambda first, last: True)
  assert iterator.serialized == [12]


def test_a_save_at_the_end_of_a_fill_reads_the_state_there():
  iterator = _FakeIterator()
  log = states.StateLog(iterator.read_state)
  log.begin(taken=0, state=None)
  _fill(log, iterator, 10, lambda first, last: False)
  # The host thread is idle at exactly the save's element: read now.
  assert log.state_at(None, 10) == (10, b"state@10", 10)
  assert iterator.serialized == [10]
  # At a pass's start, its start is the state: nothing is read.
  log.begin(taken=0, state=None)
  iterator.reads = 0
  assert log.state_at(None, 0) == (0, states.PASS_START, 0)
  assert iterator.serialized == [10]
