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
    "restored, expect_save, reads, found", [
        # A save expected in the fill: the state at its start is read.
        (None, True, [0], (0, b"state@0", 0)),
        # None expected: nothing read, none found.
        (None, False, [], None),
        # The state restored at the start is the one at element 0: not
        # read again.
        (b"restored", True, [], (0, b"restored", 7)),
    ], ids=["fresh, save expected", "no save expected", "restored"])
def test_a_fill_reads_the_state_at_its_start_only_when_needed(
    restored, expect_save, reads, found):
  iterator = _FakeIterator()
  log = states.StateLog(iterator.read_state)
  log.begin(taken=7 if restored else 0, state=restored)
  _fill(log, iterator, 10, lambda first, last: expect_save)
  assert iterator.serialized == reads
  # A save after 5 elements: the state at 0, then 5 elements skipped.
  assert log.state_at(None, 5, fresh=False) == found


def test_a_save_before_the_first_fill_short_of_its_element_reads_there():
  # At a session's start whole chunks were dropped (12 elements); the first
  # fill reads the 13th and drops it too. A save of the start step (13
  # elements trained on) may come before that fill starts.
  iterator = _FakeIterator()
  log = states.StateLog(iterator.read_state)
  log.begin(taken=0, state=None)
  iterator.reads = 12
  log.fill_ended(12)
  assert log.state_at(None, 13, fresh=False) == (12, b"state@12", 12)
  # The fill then finds the state at its start held: not read again.
  _fill(log, iterator, 3, lambda first, last: True)
  assert iterator.serialized == [12]


def test_a_save_at_the_end_of_a_fill_reads_the_state_there():
  iterator = _FakeIterator()
  log = states.StateLog(iterator.read_state)
  log.begin(taken=0, state=None)
  _fill(log, iterator, 10, lambda first, last: False)
  # The host thread is idle at exactly the save's element: read now.
  assert log.state_at(None, 10, fresh=False) == (10, b"state@10", 10)
  assert iterator.serialized == [10]
  # At a pass's start nothing is needed.
  log.begin(taken=0, state=None)
  iterator.reads = 0
  assert log.state_at(None, 0, fresh=True) is None
  assert iterator.serialized == [10]
